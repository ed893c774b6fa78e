"""GET /metrics byte for byte: the exposition of a fixed set of records and calls, against
the one prometheus_client's own updates gave before the gateway kept the values itself
(gateway.observability.tally). The expected files were written by the code before that
change (`EXPECTED`): names, labels, types, HELP, bucket bounds, the order of the series and
every value to the last bit (sums of awkward floats, in the order they were added).

To rewrite them after a deliberate change of the metrics (not of how they are kept):
`python -m tests.observability.test_metrics_exposition single|multi > FILE`.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from prometheus_client import CollectorRegistry, values
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.errors import Outcome
from gateway.observability.metrics import MULTIPROC_ENV, Metrics, prepare_multiprocess_dir
from gateway.observability.records import Gaps
from tests.observability.obs_support import KEY_IDS, MODELS, OUTCOMES, PROVIDERS, make_record

HERE = Path(__file__).resolve().parent
EXPECTED = {"single": HERE / "exposition_single.txt", "multi": HERE / "exposition_multi.txt"}

# Values whose float sums depend on the order they are added in.
AWKWARD = (0.1, 0.2, 0.30000000000000004, 1 / 3, 2 / 3, 1e-7, 123.456, 0.015, 7.0000001)


def exercise(metrics: Metrics) -> None:
    """Records of every outcome, model, provider and key (configured, unknown, empty),
    latencies on and between bucket bounds, the request path's calls in between."""
    n = 0
    for outcome in OUTCOMES * 3:
        for model, provider, key_id in (
            ("gpt-test", "openai-main", "team-a"),
            ("claude-test", "anthropic-main", "team-b"),
            ("client-chosen", "p-unknown", "k-unknown"),
            ("", "", ""),
        ):
            n += 1
            x = AWKWARD[n % len(AWKWARD)]
            metrics.stream_opened(model)
            metrics.deployment_attempt(model or "gpt-test", "openai-main/gpt-test", "ok")
            rec = make_record(
                outcome,
                model=model,
                provider=provider,
                key_id=key_id,
                route=("chat.completions", "messages", "responses", "odd")[n % 4],
                ttft_s=None if n % 5 == 0 else x * (n % 7),
                duration_s=x * n,
                overhead_s=x / 1000 * (n % 3),
                prompt_tokens=(n * 7) % 11,
                completion_tokens=(n * 3) % 5,
                inter_token_s=Gaps([x * k / 10 for k in range(n % 6)] + [0.01, 10.0, 250.0]),
                cost_nanos=(n * 1234567) % 3 * 1000,
            )
            metrics.record(rec)
            metrics.count_spend(rec)
            if n % 3:
                metrics.stream_closed(model)
    metrics.record(make_record(status=999, outcome=cast(Outcome, "odd"), ttft_s=0.005))
    metrics.record(make_record(model="", ttft_s=math.inf, duration_s=0.01, overhead_s=1.0))
    for limit in ("rpm", "tpm", "weird"):
        metrics.rate_limited("team-a", limit)
        metrics.upstream_error("openai-main", "timeout" if limit == "rpm" else "garbage")
    metrics.deployment_attempt("gpt-test", "openai-main/gpt-test", "failed")
    metrics.set_deployment_healthy("gpt-test", "openai-main/gpt-test", False)
    metrics.limiter_backend_error()
    metrics.set_log_queue_depth(3)
    metrics.log_record_dropped(2)
    metrics.trace_spans_dropped(1)


def exposition(metrics: Metrics) -> str:
    """The render, each `_created` timestamp (when a series was first used) made 0; with
    workers its lines sorted (prometheus_client merges the workers' files in no set order,
    the families' order changes from run to run)."""
    body = metrics.render()[0].decode()
    body = re.sub(r"^(\w+_created(?:\{[^}]*\})?) \S+$", r"\1 0", body, flags=re.M)
    return "".join(sorted(body.splitlines(keepends=True))) if metrics.multiprocess else body


@pytest.fixture
def single(monkeypatch: pytest.MonkeyPatch) -> Metrics:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    return Metrics(MODELS, PROVIDERS, KEY_IDS)


@pytest.fixture
def multi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Metrics]:
    saved = values.ValueClass
    prepare_multiprocess_dir(str(tmp_path))
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    yield Metrics(MODELS, PROVIDERS, KEY_IDS)
    monkeypatch.delenv(MULTIPROC_ENV)
    values.ValueClass = saved
    values.close_all_multiprocess_files()  # type: ignore[no-untyped-call]


def test_one_process_renders_what_prometheus_client_s_own_updates_rendered(
    single: Metrics,
) -> None:
    exercise(single)
    assert exposition(single) == EXPECTED["single"].read_text()


def test_workers_render_what_prometheus_client_s_own_updates_rendered(multi: Metrics) -> None:
    exercise(multi)
    assert exposition(multi) == EXPECTED["multi"].read_text()


def on_file(directory: str, name: str) -> float:
    """What another worker's scrape reads: the sum of `name`'s samples in the files."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, directory)  # type: ignore[no-untyped-call]
    return sum(
        sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == name
    )


def test_with_workers_a_loop_turn_s_updates_reach_the_files_at_its_end(multi: Metrics) -> None:
    directory = os.environ[MULTIPROC_ENV]

    async def turns() -> None:
        for _ in range(50):
            multi.stream_opened("gpt-test")
            multi.record(make_record())
            multi.deployment_attempt("gpt-test", "d", "ok")
        assert on_file(directory, "gateway_requests_total") == 0  # not yet: one write a turn
        await asyncio.sleep(0)
        assert on_file(directory, "gateway_requests_total") == 50
        assert on_file(directory, "gateway_active_streams") == 50
        assert on_file(directory, "gateway_deployment_requests_total") == 50
        assert on_file(directory, "gateway_request_duration_seconds_count") == 50
        multi.record(make_record())
        # The worker's own scrape does not wait for the turn to end.
        assert b"gateway_requests_total{" in multi.render()[0]
        assert on_file(directory, "gateway_requests_total") == 51

    asyncio.run(turns())
    multi.record(make_record())  # outside a loop: at once
    assert on_file(directory, "gateway_requests_total") == 52
    multi.stream_closed("gpt-test")
    multi.record(make_record())
    multi.close()  # the last counts stay counted, the live gauge leaves
    assert on_file(directory, "gateway_requests_total") == 53


def _print_expected(mode: str) -> None:
    if mode == "multi":
        directory = tempfile.mkdtemp()
        prepare_multiprocess_dir(directory)
        os.environ[MULTIPROC_ENV] = directory
    else:
        os.environ.pop(MULTIPROC_ENV, None)
    metrics = Metrics(MODELS, PROVIDERS, KEY_IDS)
    exercise(metrics)
    sys.stdout.write(exposition(metrics))


if __name__ == "__main__":
    _print_expected(sys.argv[1])
