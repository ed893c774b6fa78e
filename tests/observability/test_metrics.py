"""Metrics: SPEC section 7's names and labels, counts per record, bounded label values."""

from __future__ import annotations

import math
import tracemalloc
from pathlib import Path
from typing import cast

import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram

from gateway.errors import Outcome
from gateway.observability import metrics as metrics_module
from gateway.observability.metrics import (
    INTER_TOKEN_BUCKETS,
    Metrics,
    prepare_multiprocess_dir,
)
from gateway.observability.records import Gaps
from gateway.observability.tally import Cell, Tally
from tests.observability.obs_support import (
    MODELS,
    OUTCOMES,
    PROVIDERS,
    STATUS_OF,
    exercise_every_metric,
    families,
    make_record,
    samples,
    value,
)

SPEC_METRICS: dict[str, tuple[str, frozenset[str]]] = {
    # family name -> (type, label names)
    "gateway_requests": ("counter", frozenset({"model", "provider", "status", "outcome", "api"})),
    "gateway_time_to_first_token_seconds": ("histogram", frozenset({"model", "provider"})),
    "gateway_inter_token_latency_seconds": ("histogram", frozenset({"model", "provider"})),
    "gateway_request_duration_seconds": ("histogram", frozenset({"model", "provider"})),
    "gateway_overhead_seconds": ("histogram", frozenset()),
    "gateway_tokens": ("counter", frozenset({"model", "key_id", "direction"})),
    "gateway_active_streams": ("gauge", frozenset({"model"})),
    "gateway_rate_limited": ("counter", frozenset({"key_id", "limit"})),
    "gateway_upstream_errors": ("counter", frozenset({"provider", "kind"})),
    "gateway_limiter_backend_errors": ("counter", frozenset()),
    "gateway_log_queue_depth": ("gauge", frozenset()),
    "gateway_log_records_dropped": ("counter", frozenset()),
    "gateway_trace_spans_dropped": ("counter", frozenset()),
    "gateway_deployment_requests": ("counter", frozenset({"model", "deployment", "outcome"})),
    "gateway_deployment_healthy": ("gauge", frozenset({"model", "deployment"})),
}


def test_render_exposes_exactly_the_spec_metrics_with_their_labels(metrics: Metrics) -> None:
    exercise_every_metric(metrics)
    body, content_type = metrics.render()

    assert content_type == CONTENT_TYPE_LATEST
    # prometheus_client adds a *_created gauge per counter and histogram (single process only).
    exposed = {name: kind for name, kind in families(body).items() if not name.endswith("_created")}
    assert exposed == {name: kind for name, (kind, _) in SPEC_METRICS.items()}
    for sample in samples(body):
        family = next(f for f in SPEC_METRICS if sample.name.startswith(f))
        labels = set(sample.labels) - {"le"}
        assert labels == SPEC_METRICS[family][1], sample


def test_a_record_of_each_outcome_is_counted_once_under_its_status(metrics: Metrics) -> None:
    exercise_every_metric(metrics)
    body, _ = metrics.render()

    for outcome in OUTCOMES:
        labels = {"model": "gpt-test", "provider": "openai-main", "outcome": outcome}
        assert value(body, "gateway_requests_total", **labels) == 1
        assert value(body, "gateway_requests_total", status=str(STATUS_OF[outcome]), **labels)
    n = len(OUTCOMES)
    assert value(body, "gateway_requests_total") == n
    assert value(body, "gateway_time_to_first_token_seconds_count") == n
    assert value(body, "gateway_request_duration_seconds_count") == n
    assert value(body, "gateway_request_duration_seconds_sum") == pytest.approx(1.5 * n)
    assert value(body, "gateway_overhead_seconds_count") == n
    assert value(body, "gateway_inter_token_latency_seconds_count") == 3 * n
    assert value(body, "gateway_tokens_total", direction="prompt", key_id="team-a") == 11 * n
    assert value(body, "gateway_tokens_total", direction="completion", model="gpt-test") == 7 * n
    assert value(body, "gateway_active_streams", model="gpt-test") == 1
    assert value(body, "gateway_rate_limited_total", key_id="team-a", limit="rpm") == 1
    assert value(body, "gateway_upstream_errors_total", provider="openai-main", kind="timeout")
    assert value(body, "gateway_limiter_backend_errors_total") == 1
    assert value(body, "gateway_log_queue_depth") == 3
    assert value(body, "gateway_log_records_dropped_total") == 1
    assert value(body, "gateway_trace_spans_dropped_total") == 1


def test_a_request_without_first_token_observes_no_ttft(metrics: Metrics) -> None:
    metrics.record(make_record("rejected", ttft_s=None, inter_token_s=Gaps(), prompt_tokens=0))
    body, _ = metrics.render()

    assert not value(body, "gateway_time_to_first_token_seconds_count")
    assert not value(body, "gateway_inter_token_latency_seconds_count")
    assert value(body, "gateway_request_duration_seconds_count") == 1
    assert not value(body, "gateway_tokens_total", direction="prompt")
    assert value(body, "gateway_tokens_total", direction="completion") == 7


def test_unknown_label_values_collapse_to_other_and_empty_ones_to_none(metrics: Metrics) -> None:
    for i in range(50):
        metrics.record(make_record(model=f"client-chosen-{i}", key_id=f"k{i}", provider=f"p{i}"))
    metrics.record(make_record("rejected", model="", key_id="", provider=""))
    metrics.record(make_record(status=999))
    metrics.record(make_record(status=200, outcome=cast(Outcome, "not-an-outcome")))
    metrics.stream_opened("client-chosen-x")
    metrics.rate_limited("k-unknown", "weird-limit")
    metrics.upstream_error("p-unknown", "Traceback (most recent call last) ...")
    body, _ = metrics.render()

    req = "gateway_requests_total"
    assert value(body, req, model="other", provider="other") == 50
    assert value(body, req, model="none", provider="none", outcome="rejected") == 1
    assert value(body, req, status="other") == 1
    assert value(body, req, outcome="other") == 1
    assert value(body, "gateway_tokens_total", key_id="other", direction="prompt") == 50 * 11
    assert value(body, "gateway_tokens_total", key_id="none", model="none") == 11 + 7
    assert value(body, "gateway_active_streams", model="other") == 1
    assert value(body, "gateway_rate_limited_total", key_id="other", limit="other") == 1
    assert value(body, "gateway_upstream_errors_total", provider="other", kind="other") == 1
    label_values = {v for s in samples(body) for k, v in s.labels.items() if k != "le"}
    assert not any(v.startswith(("client-chosen", "k1", "p1", "Traceback")) for v in label_values)


def test_records_are_counted_alike_before_and_past_the_remembered_combinations(
    metrics: Metrics,
) -> None:
    """`record` remembers the cells of 1024 combinations of a record's fields; the rest
    are looked up each time, to the same cells."""
    kept = metrics_module._RECORD_KINDS_KEPT
    for i in range(kept + 100):
        metrics.record(make_record(model=f"client-chosen-{i}"))
    for _ in range(3):
        metrics.record(make_record(model=f"client-chosen-{kept + 50}", ttft_s=None))
        metrics.record(make_record())
    assert len(metrics._cells_by_record) == kept
    body, _ = metrics.render()
    req = "gateway_requests_total"
    assert value(body, req, model="other", provider=PROVIDERS[0]) == kept + 103
    assert value(body, req, model=MODELS[0], provider=PROVIDERS[0]) == 3
    ttft = "gateway_time_to_first_token_seconds_count"
    assert value(body, ttft, model="other", provider=PROVIDERS[0]) == kept + 100


def test_two_metrics_in_one_process_keep_separate_registries(metrics: Metrics) -> None:
    other = Metrics(["gpt-test"], ["openai-main"], ["team-a"])
    metrics.record(make_record())
    metrics.record(make_record())
    other.record(make_record())

    assert value(metrics.render()[0], "gateway_requests_total") == 2
    assert value(other.render()[0], "gateway_requests_total") == 1


def test_active_streams_go_back_to_zero_when_streams_close(metrics: Metrics) -> None:
    for model in ("gpt-test", "claude-test", "unknown"):
        metrics.stream_opened(model)
    metrics.stream_opened("gpt-test")
    assert metrics.active_streams_total() == 4

    for model in ("gpt-test", "claude-test", "unknown", "gpt-test"):
        metrics.stream_closed(model)
    assert metrics.active_streams_total() == 0
    body, _ = metrics.render()
    # Configured models have a series from the start, at 0.
    assert value(body, "gateway_active_streams", model="claude-test") == 0


def test_active_streams_of_unconfigured_names_keep_their_bounded_labels(
    metrics: Metrics,
) -> None:
    """A configured model's cell is found by its name at once; any other name still goes
    through the label's bounding, also one that is spelt like a label ("none", "other")."""
    for model in ("none", "", "other", "gpt-test"):
        metrics.stream_opened(model)
    body, _ = metrics.render()
    assert value(body, "gateway_active_streams", model="other") == 2
    assert value(body, "gateway_active_streams", model="none") == 1
    assert value(body, "gateway_active_streams", model="gpt-test") == 1
    for model in ("none", "", "other", "gpt-test"):
        metrics.stream_closed(model)
    assert metrics.active_streams_total() == 0


def test_many_inter_token_gaps_land_in_the_same_buckets_as_one_observe_each(
    metrics: Metrics,
) -> None:
    gaps = [0.0, 0.0005, 0.001, 0.0011, 0.02, 0.02, 0.3, 9.9, 10.0, 11.0, 250.0] * 30
    metrics.record(make_record(inter_token_s=Gaps(gaps)))
    reference = Histogram(
        "ref", "", buckets=INTER_TOKEN_BUCKETS, registry=(registry := CollectorRegistry())
    )
    for gap in gaps:
        reference.observe(gap)

    body, _ = metrics.render()
    ours = {
        s.labels["le"]: s.value
        for s in samples(body)
        if s.name == "gateway_inter_token_latency_seconds_bucket"
    }
    theirs = {
        s.labels["le"]: s.value
        for fam in registry.collect()
        for s in fam.samples
        if s.name == "ref_bucket"
    }
    assert ours == theirs
    assert value(body, "gateway_inter_token_latency_seconds_count") == len(gaps)
    assert value(body, "gateway_inter_token_latency_seconds_sum") == pytest.approx(sum(gaps))


def test_a_prometheus_client_without_the_internals_the_cells_use_fails_at_start_up() -> None:
    registry = CollectorRegistry()
    histogram = Histogram("h", "", buckets=INTER_TOKEN_BUCKETS, registry=registry)
    Tally(histogram)  # the pinned version's internals
    del histogram._sum  # what a release that reshaped them would look like
    with pytest.raises(RuntimeError, match="_sum"):
        Tally(histogram)
    counter = Counter("c", "", registry=registry)
    Cell(counter)
    counter._value = None  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="_value"):
        Cell(counter)


def test_a_stream_s_gaps_take_as_much_memory_after_10000_reads_as_after_one() -> None:
    """A stream holds its gaps for its whole life: a list of them grew by a float and a slot
    per relayed read (320 KB here)."""
    tracemalloc.start()
    try:
        gaps = Gaps()
        gaps.append(0.02)
        before = tracemalloc.get_traced_memory()[0]
        for i in range(10_000):
            gaps.append(0.001 * (i % 300))
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(gaps) == 10_001
    assert grown < 1_000


def test_the_request_path_calls_never_raise_on_odd_values(metrics: Metrics) -> None:
    metrics.record(
        make_record(
            ttft_s=math.nan,
            duration_s=-1.0,
            overhead_s=math.inf,
            prompt_tokens=-5,
            completion_tokens=-1,
            inter_token_s=Gaps([math.nan, -0.1, math.inf] * 5),
        )
    )
    metrics.set_log_queue_depth(-1)
    metrics.log_record_dropped(0)
    metrics.log_record_dropped(-3)
    body, _ = metrics.render()
    assert value(body, "gateway_requests_total") == 1
    assert value(body, "gateway_log_records_dropped_total") == 0


def test_close_is_harmless_in_single_process_mode(metrics: Metrics) -> None:
    metrics.stream_opened("gpt-test")
    metrics.close()
    assert metrics.active_streams_total() == 1


def test_prepare_multiprocess_dir_creates_it_and_removes_stale_files(tmp_path: Path) -> None:
    target = tmp_path / "metrics" / "dir"
    prepare_multiprocess_dir(str(target))
    assert target.is_dir()

    (target / "counter_123.db").write_bytes(b"stale")
    (target / "gauge_livesum_123.db").write_bytes(b"stale")
    prepare_multiprocess_dir(str(target))
    assert list(target.iterdir()) == []
