"""The one record each request leaves behind, for metrics and the request log alike."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field
from math import floor

from gateway.errors import Outcome
from gateway.observability.trace_context import RequestTrace

INTER_TOKEN_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25,
    0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Upper bounds of gateway_inter_token_latency_seconds' buckets (and +Inf after them)."""
_NO_COUNTS = (0,) * (len(INTER_TOKEN_BUCKETS) + 1)


_SCALES = (1.0, 10.0, 100.0, 1000.0)


def round_to(value: float, digits: int) -> float:
    """`round(value, digits)` (0 to 3 digits), the same float, at about a third of its cost.

    round() with digits writes the value out in decimal and reads it back, about 0.5 µs; the
    request log's line takes three. Here: the value times 10**digits, rounded to an integer
    n, divided back. Where that integer is surely the decimal rounding round() makes (the
    scaled value below 1e12, so its own rounding error is under 0.0002, and at least 0.01
    away from a .5 tie), n / 10**digits is the float nearest that decimal, which is what
    round() returns: one IEEE division of exact numbers is correctly rounded. (n is taken
    as floor(scaled + 0.5), which is the nearest integer wherever that is within 0.49 of
    the scaled value, the only n kept: the sum's own rounding error is under 0.0001.)
    Anything else (ties, huge values, NaN, infinities, and 0, whose sign round() keeps)
    goes to round().
    tests/observability/test_log_numbers.py compares the two on 400,000 values.
    """
    scale = _SCALES[digits]
    scaled = value * scale
    if -1e12 < scaled < 1e12:
        # floor() of a float is a plain call; round() looks up `__round__`, a third of
        # this function's cost.
        n = floor(scaled + 0.5)
        if n and abs(scaled - n) < 0.49:
            return n / scale
    return round(value, digits)


class Gaps:
    """A stream's gaps between upstream reads, kept as the inter-token histogram counts them:
    a count per bucket and their sum. A stream holds its gaps from its first event to its
    end, and a list of them grew by 32 bytes per relayed read (a float and its slot), 64 KB
    for an answer of 2,000 events; this stays at about 300 bytes however long the stream.
    Counting a gap as it comes costs about 0.1 µs more per relayed read than appending it
    did, and the request's bookkeeping as much less (metrics no longer walks every gap)."""

    __slots__ = ("counts", "total")

    def __init__(self, gaps: Iterable[float] = ()) -> None:
        # Copied from a tuple of zeros, and no loop over no gaps: every request makes one
        # (`RequestRecord`), about 800 instructions less (callgrind).
        self.counts = [*_NO_COUNTS]
        """Gaps per bucket: at most INTER_TOKEN_BUCKETS[i] (and above the last: +Inf)."""
        self.total = 0.0
        if gaps:
            for gap in gaps:
                self.append(gap)

    def append(self, gap: float) -> None:
        """Count one gap where observe() would: the first bucket whose bound is not below
        it; NaN in none, but in the sum (so the sum is NaN), as observe() does."""
        if gap == gap:
            self.counts[bisect_left(INTER_TOKEN_BUCKETS, gap)] += 1
        self.total += gap

    def __len__(self) -> int:
        return sum(self.counts)


@dataclass(slots=True)
class RequestRecord:
    """One request's record, alive as long as the request (a stream's, for minutes):
    slotted, so thousands of open streams keep no attribute dict each."""

    request_id: str
    route: str
    """chat.completions, completions, embeddings, models, ..."""
    key_id: str = ""
    model: str = ""
    """The model name the client asked for (an unknown one cut to 200 characters; "" when
    not given or the request ended before its body was read)."""
    provider: str = ""
    """The provider that answered (a fallback's, when one was used)."""
    answered_by: str = ""
    """The configured model that answered (a fallback's, when one was used): its prices
    are the ones charged. "" before any upstream attempt."""
    deployment: str = ""
    """The deployment of that model that answered (or was tried last); "" before any
    upstream attempt."""
    status: int = 0
    outcome: Outcome = "completed"
    stream: bool = False
    ttft_s: float | None = None
    """Request arrival to the first byte of the answer sent to the client."""
    duration_s: float = 0.0
    ended_at: float = 0.0
    """Unix time the request ended (the request log's timestamp); 0: not set."""
    overhead_s: float = 0.0
    """Time spent in the gateway rather than upstream: admission (arrival to upstream
    request sent) plus relaying the first event (received to sent)."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_reported: bool = False
    """True when the token counts come from the provider's usage, False when estimated."""
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    """Parts of prompt_tokens / completion_tokens the provider reported (gateway.pricing)."""
    cost_nanos: int = 0
    """What the request cost, in nano-dollars (`cost_usd` in the log line)."""
    inter_token_s: Gaps = field(default_factory=Gaps)
    """Gaps between successive upstream reads carrying events (metrics only, not logged)."""
    error: str = ""
    attempts: int = 1
    request_body: bytes | None = None
    """Only kept when `log_bodies: true`."""
    response_text: str | None = None
    """Only kept when `log_bodies: true`."""
    trace: RequestTrace | None = None
    """The trace context when tracing is on and this request is sampled (the spans are
    built from this record when it is finished: `gateway.observability.tracing`)."""

    def log_fields(self) -> dict[str, object]:
        """The JSON fields of the request log line (README, "Observability")."""
        fields: dict[str, object] = {
            "request_id": self.request_id,
            "route": self.route,
            "key_id": self.key_id,
            "model": self.model,
            "provider": self.provider,
            "deployment": self.deployment,
            "status": self.status,
            "outcome": self.outcome,
            "stream": self.stream,
            "ttft_ms": None if self.ttft_s is None else round_to(self.ttft_s * 1000, 2),
            "duration_ms": round_to(self.duration_s * 1000, 2),
            "overhead_ms": round_to(self.overhead_s * 1000, 3),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "usage_reported": self.usage_reported,
            "cost_usd": self.cost_nanos / 1e9,
            "attempts": self.attempts,
        }
        if self.cached_tokens or self.cache_write_tokens or self.reasoning_tokens:
            fields["cached_tokens"] = self.cached_tokens
            fields["cache_write_tokens"] = self.cache_write_tokens
            fields["reasoning_tokens"] = self.reasoning_tokens
        if self.error:
            fields["error"] = self.error
        if self.request_body is not None:
            fields["request_body"] = self.request_body.decode("utf-8", "replace")
        if self.response_text is not None:
            fields["response_text"] = self.response_text
        return fields
