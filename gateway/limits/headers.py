"""OpenAI's rate-limit response headers, from a limiter's `RateState`.

`rate_limit_headers()` gives `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`;
the "requests" trio reports the key's rpm, the "tokens" trio its tpm, each only when that
limit is configured (OpenAI's clients treat a missing header as "no limit known").
Resets are written the way OpenAI writes them, as Go-style durations: `20ms`, `1s`,
`8.64s`, `1m30.5s`, `6m0s`, rounded up to the millisecond so a client that waits that long
finds room. `retry_after_header()` gives `retry-after` in whole seconds, rounded up.

Deliberately not here: daily / monthly quotas (OpenAI has no header for them; a 429 for
them carries `retry-after` until the period's end), and deciding when to send the headers
(the edge sends them on every response, 429s included).
"""

from __future__ import annotations

import math

from gateway.limits.base import RateState


def format_duration(seconds: float) -> str:
    """A duration as OpenAI's headers spell it: `0s`, `20ms`, `1s`, `1m30.5s`, `1h0m0s`."""
    # round() first: 1.1 * 1000 is 1100.0000000000002, which must not become 1101 ms.
    ms = math.ceil(round(seconds * 1000, 6))
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, frac = divmod(rest, 1000)
    secs = f"{whole}.{frac:03d}".rstrip("0").rstrip(".") if frac else str(whole)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def rate_limit_headers(state: RateState) -> list[tuple[bytes, bytes]]:
    """The `x-ratelimit-*` headers for the limits the key has (none when degraded)."""
    headers: list[tuple[bytes, bytes]] = []
    if state.limit_requests is not None:
        remaining = max(state.remaining_requests or 0, 0)
        headers += [
            (b"x-ratelimit-limit-requests", str(state.limit_requests).encode()),
            (b"x-ratelimit-remaining-requests", str(remaining).encode()),
            (b"x-ratelimit-reset-requests", format_duration(state.reset_requests_s).encode()),
        ]
    if state.limit_tokens is not None:
        remaining = max(state.remaining_tokens or 0, 0)
        headers += [
            (b"x-ratelimit-limit-tokens", str(state.limit_tokens).encode()),
            (b"x-ratelimit-remaining-tokens", str(remaining).encode()),
            (b"x-ratelimit-reset-tokens", format_duration(state.reset_tokens_s).encode()),
        ]
    return headers


def retry_after_header(seconds: float) -> tuple[bytes, bytes]:
    """`retry-after` in whole seconds, rounded up, at least 1."""
    return (b"retry-after", str(max(math.ceil(round(seconds, 6)), 1)).encode())
