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
    return _duration(seconds).decode()


_MS = [b"0s", *(b"%dms" % ms for ms in range(1, 1000))]
"""`_duration` of each whole ms below a second (the usual rpm reset under load)."""

_FRACTION = [b"", *(b".%s" % (b"%03d" % ms).rstrip(b"0") for ms in range(1, 1000))]
"""A second's fraction as `_duration` writes it: `.5` for 500 ms, `.464`, nothing for 0."""

_SECONDS = [b"%d" % s for s in range(60)]
_FRACTION_S = [fraction + b"s" for fraction in _FRACTION]
"""`_duration` below a minute (every rpm and tpm reset) is `_SECONDS[s] + _FRACTION_S[ms]`:
one concatenation, where the general way's divisions and `%` cost about 3,000 instructions."""


def _ceil_ms(seconds: float) -> int:
    """`math.ceil(round(seconds * 1000, 6))`: whole ms rounded up, after rounding away the
    float error of the multiplication (1.1 * 1000 is 1100.0000000000002, which must not
    become 1101 ms).

    Without `round()` where it cannot change the answer (it costs 0.6 µs, and every
    response of a limited key formats two resets): `round(x, 6)` takes a fraction below
    5e-7 down to the whole ms and one above it past the whole ms, and the fraction
    `x - int(x)` is computed exactly, so only one within float error of 5e-7 needs
    `round()` to decide. tests/limits/test_limit_headers.py checks it against the formula."""
    x = seconds * 1000
    if x <= 0:
        return 0
    ms = int(x)
    fraction = x - ms
    if fraction > 5.001e-7:
        return ms + 1
    if fraction < 4.999e-7:
        return ms
    return math.ceil(round(x, 6))


def _duration(seconds: float) -> bytes:
    """`format_duration`, as header bytes; tables for the common parts, since every response
    of a limited key carries two."""
    ms = _ceil_ms(seconds)
    if ms < 1000:
        return _MS[ms] if ms > 0 else b"0s"
    if ms < 60_000:
        whole, frac = divmod(ms, 1000)
        return _SECONDS[whole] + _FRACTION_S[frac]
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, frac = divmod(rest, 1000)
    if hours:
        return b"%dh%dm%d%bs" % (hours, minutes, whole, _FRACTION[frac])
    if minutes:
        return b"%dm%d%bs" % (minutes, whole, _FRACTION[frac])
    return b"%d%bs" % (whole, _FRACTION[frac])


_REQUESTS_LIMIT: dict[int, tuple[bytes, bytes]] = {}
_TOKENS_LIMIT: dict[int, tuple[bytes, bytes]] = {}
"""The `x-ratelimit-limit-*` fields by limit: a key's limits are the same on every response,
and looking one up costs about 700 instructions less than formatting it (callgrind)."""
_LIMITS_KEPT = 1024


def _limit_field(
    fields: dict[int, tuple[bytes, bytes]], name: bytes, limit: int
) -> tuple[bytes, bytes]:
    """`(name, limit as digits)`, remembered in `fields` (at most `_LIMITS_KEPT` limits)."""
    field = (name, b"%d" % limit)
    if len(fields) >= _LIMITS_KEPT:
        fields.clear()
    fields[limit] = field
    return field


def rate_limit_headers(state: RateState) -> list[tuple[bytes, bytes]]:
    """The `x-ratelimit-*` headers for the limits the key has (none when degraded)."""
    rpm, tpm = state.limit_requests, state.limit_tokens
    # Remaining counts are clamped at 0 with a conditional, not max(): every response of a
    # limited key formats two. Both resets are usually the same window's end: written once
    # then (a duration is about 6,500 instructions, a third of this function's cost).
    if rpm is not None:
        try:
            limit = _REQUESTS_LIMIT[rpm]
        except KeyError:
            limit = _limit_field(_REQUESTS_LIMIT, b"x-ratelimit-limit-requests", rpm)
        left = state.remaining_requests
        reset = _duration(state.reset_requests_s)
        headers = [
            limit,
            (b"x-ratelimit-remaining-requests", b"%d" % left if left and left > 0 else b"0"),
            (b"x-ratelimit-reset-requests", reset),
        ]
        if tpm is None:
            return headers
        if state.reset_tokens_s != state.reset_requests_s:
            reset = _duration(state.reset_tokens_s)
    elif tpm is not None:
        headers = []
        reset = _duration(state.reset_tokens_s)
    else:
        return []
    try:
        limit = _TOKENS_LIMIT[tpm]
    except KeyError:
        limit = _limit_field(_TOKENS_LIMIT, b"x-ratelimit-limit-tokens", tpm)
    left = state.remaining_tokens
    headers += (
        limit,
        (b"x-ratelimit-remaining-tokens", b"%d" % left if left and left > 0 else b"0"),
        (b"x-ratelimit-reset-tokens", reset),
    )
    return headers


def retry_after_header(seconds: float) -> tuple[bytes, bytes]:
    """`retry-after` in whole seconds, rounded up, at least 1."""
    return (b"retry-after", str(max(math.ceil(round(seconds, 6)), 1)).encode())
