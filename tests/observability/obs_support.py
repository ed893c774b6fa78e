"""Records and exposition parsing shared by the observability tests."""

from __future__ import annotations

from typing import get_args

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from gateway.errors import Outcome
from gateway.observability.metrics import Metrics
from gateway.observability.records import Gaps, RequestRecord

MODELS = ("gpt-test", "claude-test")
PROVIDERS = ("openai-main", "anthropic-main")
KEY_IDS = ("team-a", "team-b")

STATUS_OF: dict[str, int] = {
    "completed": 200,
    "client_cancelled": 200,
    "upstream_error": 502,
    "truncated": 200,
    "idle_timeout": 200,
    "rate_limited": 429,
    "slow_client": 200,
    "shutdown": 200,
    "rejected": 401,
}
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)


def make_record(outcome: Outcome = "completed", **overrides: object) -> RequestRecord:
    rec = RequestRecord(
        request_id="req-1",
        route="chat.completions",
        key_id="team-a",
        model="gpt-test",
        provider="openai-main",
        status=STATUS_OF.get(outcome, 200),
        outcome=outcome,
        stream=True,
        ttft_s=0.12,
        duration_s=1.5,
        overhead_s=0.0004,
        prompt_tokens=11,
        completion_tokens=7,
        usage_reported=True,
        inter_token_s=Gaps([0.02, 0.03, 0.025]),
    )
    for name, val in overrides.items():
        setattr(rec, name, val)
    return rec


def exercise_every_metric(metrics: Metrics) -> None:
    """Touch every metric once: a record of each outcome and each side-channel call."""
    for outcome in OUTCOMES:
        metrics.record(make_record(outcome))
    metrics.stream_opened("gpt-test")
    metrics.rate_limited("team-a", "rpm")
    metrics.upstream_error("openai-main", "timeout")
    metrics.limiter_backend_error()
    metrics.set_log_queue_depth(3)
    metrics.log_record_dropped()
    metrics.trace_spans_dropped(1)
    metrics.deployment_attempt("gpt-test", "openai-main/gpt-test", "ok")
    metrics.set_deployment_healthy("gpt-test", "openai-main/gpt-test", True)


def samples(body: bytes) -> list[Sample]:
    return [s for fam in text_string_to_metric_families(body.decode()) for s in fam.samples]


def families(body: bytes) -> dict[str, str]:
    """Family name -> type ("counter", "histogram", "gauge")."""
    return {fam.name: fam.type for fam in text_string_to_metric_families(body.decode())}


def value(body: bytes, name: str, **labels: str) -> float | None:
    """The sum of the samples called `name` whose labels include `labels` (None: none)."""
    found = [
        s.value for s in samples(body) if s.name == name and labels.items() <= s.labels.items()
    ]
    return sum(found) if found else None
