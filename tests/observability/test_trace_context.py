"""The per-request part of tracing: reading a client's `traceparent`, sampling, the header
sent upstream (no OpenTelemetry import here: this is what runs while a request does)."""

from __future__ import annotations

from time import perf_counter

import pytest

from gateway.config import ConfigError, parse_config
from gateway.observability.trace_context import TraceStarter, parse_traceparent
from tests.test_config import minimal

GOOD = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_valid_traceparent_is_read() -> None:
    assert parse_traceparent(GOOD) == (
        0x4BF92F3577B34DA6A3CE929D0E0E4736,
        0x00F067AA0BA902B7,
        True,
    )
    assert parse_traceparent(GOOD[:-2] + b"00")[2] is False  # type: ignore[index]
    # A later version may append fields; its first four are read the same.
    assert parse_traceparent(b"01" + GOOD[2:] + b"-what-comes-next") is not None


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"garbage",
        GOOD.upper(),  # lowercase hex only
        b"ff" + GOOD[2:],  # version ff is invalid
        b"00-" + b"0" * 32 + GOOD[35:],  # all-zero trace id
        GOOD[:36] + b"0" * 16 + GOOD[52:],  # all-zero parent id
        GOOD + b"-extra",  # version 00 has exactly four fields
        GOOD.replace(b"-", b"_"),
        b"00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        b"-" * 1000,  # dashes where the hex fields belong (was a 500)
        b"01-" + b"-" * 32 + GOOD[35:] + b"-next",
        GOOD[:3] + b"-" + GOOD[4:],
    ],
)
def test_a_malformed_traceparent_starts_a_new_trace(value: bytes) -> None:
    assert parse_traceparent(value) is None
    trace = TraceStarter(1.0).start([(b"traceparent", value)], perf_counter())
    assert trace is not None and trace.parent_span_id == 0


def test_the_client_sampled_flag_decides_whatever_the_ratio() -> None:
    sampled = [(b"traceparent", GOOD)]
    unsampled = [(b"traceparent", GOOD[:-2] + b"00")]
    assert TraceStarter(0.0).start(sampled, perf_counter()) is not None
    assert TraceStarter(1.0).start(unsampled, perf_counter()) is None
    trace = TraceStarter(0.0).start(sampled, perf_counter())
    assert trace is not None
    assert trace.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    assert trace.parent_span_id == 0x00F067AA0BA902B7
    assert trace.span_id not in (0, trace.parent_span_id)


def test_new_traces_are_sampled_at_the_ratio() -> None:
    starter = TraceStarter(0.25)
    kept = sum(starter.start([], perf_counter()) is not None for _ in range(20_000))
    assert 4_000 < kept < 6_000  # 5,000 expected; binomial sd ~61
    assert all(TraceStarter(1.0).start([], perf_counter()) for _ in range(1000))
    assert not any(TraceStarter(0.0).start([], perf_counter()) for _ in range(1000))


def test_each_attempt_names_its_own_span_upstream() -> None:
    trace = TraceStarter(1.0).start([(b"traceparent", GOOD)], perf_counter())
    assert trace is not None
    first = trace.begin_attempt("p", "m", "m-upstream")
    second = trace.begin_attempt("p", "m", "m-upstream")
    assert first.span_id != second.span_id
    assert trace.traceparent(first.span_id) == (
        f"00-4bf92f3577b34da6a3ce929d0e0e4736-{first.span_id:016x}-01"
    )


def test_tracing_config() -> None:
    config = parse_config(
        minimal(tracing={"otlp_endpoint": "http://collector:4318", "sample_ratio": 0.5}), "gw", {}
    )
    assert config.tracing is not None and config.tracing.sample_ratio == 0.5
    assert parse_config(minimal(), "gw", {}).tracing is None
    # `${VAR:-}` with VAR unset: off, as the deploy config uses it
    off = minimal(tracing={"otlp_endpoint": "${OTLP:-}"})
    assert parse_config(off, "gw", {}).tracing is None
    with pytest.raises(ConfigError, match=r"tracing\.sample_ratio"):
        parse_config(minimal(tracing={"otlp_endpoint": "http://c", "sample_ratio": 2}), "gw", {})
    with pytest.raises(ConfigError, match=r"tracing\.otlp_endpoint"):
        parse_config(minimal(tracing={"otlp_endpoint": "collector:4318"}), "gw", {})
    with pytest.raises(ConfigError, match="tracing"):
        parse_config(minimal(tracing={"otlp_endpoint": "http://c", "bogus": 1}), "gw", {})
