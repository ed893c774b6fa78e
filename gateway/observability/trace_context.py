"""A request's trace context: W3C `traceparent` in and out, sampling, and attempt timings.

What tracing costs a request while it runs is here, and it is small on purpose: read the
client's `traceparent`, decide whether the trace is sampled, mint span ids, note each
upstream attempt's start and end (`perf_counter`), and name the attempt's span in the
`traceparent` sent upstream. No span object exists while the request runs: the spans are
built from the finished `RequestRecord` with these timings, off the request path, by
`gateway.observability.tracing` (the only module that imports the OpenTelemetry SDK).

Sampling is parent-based like the SDK's `ParentBased(TraceIdRatioBased(ratio))`: a client's
sampled flag is honoured either way; a new trace is sampled when the low 64 bits of its id
fall under `ratio * 2**64` (the SDK's own rule, so a collector's tail sampler agrees). A
request that is not sampled leaves no trace context at all (nothing recorded, no header
added upstream). Ids are minted by the gateway; a client's `traceparent` is only a parent.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from time import perf_counter

_TRACEPARENT = b"traceparent"
_HEX = frozenset(b"0123456789abcdef")
_MAX_64 = (1 << 64) - 1


@dataclass(slots=True)
class AttemptTiming:
    """One upstream attempt (a retry, a fallback, a failover): a child span of the request."""

    span_id: int
    provider: str
    model: str
    """The configured model tried (a fallback's when falling back)."""
    upstream_model: str
    """The model name sent upstream."""
    start: float
    """perf_counter() when the attempt began."""
    end: float = 0.0
    error: str = ""
    """Why it failed (`http_503`, `connect`, `first_token_timeout`, ...); "" when it answered."""
    deployment: str = ""
    """The deployment chosen, when the model has several (the router's)."""


@dataclass(slots=True)
class RequestTrace:
    """A sampled request's ids and timings, kept on its `RequestRecord` (`trace`)."""

    trace_id: int
    span_id: int
    """The request's own span, minted here."""
    parent_span_id: int
    """The client's span (its `traceparent`); 0: the request starts the trace."""
    start_ns: int
    """Unix time of the request's arrival, in nanoseconds."""
    start_perf: float
    """perf_counter() at the same moment: the attempts' timings are offsets from it."""
    attempts: list[AttemptTiming] = field(default_factory=list)
    finish_reason: str = ""

    def begin_attempt(
        self, provider: str, model: str, upstream_model: str, deployment: str = ""
    ) -> AttemptTiming:
        attempt = AttemptTiming(
            _span_id(), provider, model, upstream_model, perf_counter(), deployment=deployment
        )
        self.attempts.append(attempt)
        return attempt

    def traceparent(self, span_id: int) -> str:
        """The header sent upstream: this trace, the given span (an attempt's) as parent."""
        return f"00-{self.trace_id:032x}-{span_id:016x}-01"

    def unix_ns(self, perf: float) -> int:
        return self.start_ns + int((perf - self.start_perf) * 1e9)


class TraceStarter:
    """Starts a request's trace context (or not): built once when tracing is configured."""

    __slots__ = ("_bound",)

    def __init__(self, sample_ratio: float) -> None:
        self._bound = round(sample_ratio * (_MAX_64 + 1))

    def start(
        self, headers: Iterable[tuple[bytes, bytes]], started_at: float
    ) -> RequestTrace | None:
        """The trace context of a request with these ASGI headers, arrived at `started_at`
        (perf_counter); None when it is not sampled."""
        parent: tuple[int, int, bool] | None = None
        for name, value in headers:
            if name == _TRACEPARENT:
                parent = parse_traceparent(value)
                break
        if parent is None:
            trace_id, parent_id = random.getrandbits(128) or 1, 0
            if trace_id & _MAX_64 >= self._bound:
                return None
        else:
            trace_id, parent_id, sampled = parent
            if not sampled:
                return None
        now_ns = time.time_ns() - int((perf_counter() - started_at) * 1e9)
        return RequestTrace(trace_id, _span_id(), parent_id, now_ns, started_at)


def parse_traceparent(value: bytes) -> tuple[int, int, bool] | None:
    """(trace id, parent span id, sampled) of a W3C `traceparent`; None when it is not one
    (then the request starts a new trace, as the spec asks)."""
    value = value.strip()
    # version 00 is exactly 55 bytes; a later version may append fields after a dash
    if len(value) < 55 or (len(value) > 55 and value[55:56] != b"-"):
        return None
    version, trace, span, flags = value[:2], value[3:35], value[36:52], value[53:55]
    if value[2:3] != b"-" or value[35:36] != b"-" or value[52:53] != b"-":
        return None
    # Each field on its own: dashes where hex digits belong are not a field (`-` * 55).
    if not all(_HEX.issuperset(part) for part in (version, trace, span, flags)):
        return None
    if version == b"ff":
        return None
    if version == b"00" and len(value) != 55:
        return None
    trace_id, span_id = int(trace, 16), int(span, 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, bool(int(flags, 16) & 1)


def _span_id() -> int:
    return random.getrandbits(64) or 1
