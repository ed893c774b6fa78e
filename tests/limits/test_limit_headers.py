"""OpenAI's rate-limit headers, rendered from a RateState."""

from __future__ import annotations

import math
import random

import pytest

from gateway.limits.base import RateState
from gateway.limits.headers import (
    _ceil_ms,
    format_duration,
    rate_limit_headers,
    retry_after_header,
)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-3, "0s"),
        (0.02, "20ms"),
        (0.0001, "1ms"),
        (0.9994, "1s"),
        (0.9999999, "1s"),
        (1, "1s"),
        (1.1, "1.1s"),
        (8.64, "8.64s"),
        (59.75, "59.75s"),
        (60, "1m0s"),
        (90.5, "1m30.5s"),
        (360, "6m0s"),
        (3600, "1h0m0s"),
        (86399.999, "23h59m59.999s"),
    ],
)
def test_durations_are_written_the_way_openai_writes_them(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_whole_ms_are_the_formula_without_its_round() -> None:
    """`_ceil_ms` skips `round()` where it cannot change the result: same answer as
    `math.ceil(round(seconds * 1000, 6))` everywhere, the rounding boundary included."""
    rng = random.Random(22)
    boundary = [ms + f for ms in (0, 1, 999, 86_399_999) for f in (4.998e-7, 4.9999e-7, 5e-7)]
    cases = [
        *(ms / 1000 for ms in range(-5, 5_000)),  # whole ms, as float seconds
        *(us / 1e6 for us in range(0, 3_000_000, 7)),  # Redis's resets: whole µs
        *(rng.uniform(0, 100_000) for _ in range(100_000)),
        *(x / 1000 for x in boundary),
        *(x / 1000 for x in (f + 2e-13 for f in boundary)),
        *(x / 1000 for x in (f + 1e-7 for f in boundary)),
        1.1,
        0.0011,
        -0.5,
        0.0,
        5e-10,
    ]
    for seconds in cases:
        assert _ceil_ms(seconds) == max(math.ceil(round(seconds * 1000, 6)), 0), seconds


def test_durations_under_a_minute_are_the_general_spelling() -> None:
    """Below a minute (every rpm and tpm reset) a duration is read from tables: the same
    text as the general way, `<seconds>.<ms, trailing zeros dropped>s`, for every ms."""
    for ms in range(0, 61_000):
        whole, frac = divmod(ms, 1000)
        if ms < 1000:
            expected = f"{ms}ms" if ms else "0s"
        elif ms < 60_000:
            expected = f"{whole}{f'.{frac:03d}'.rstrip('0') if frac else ''}s"
        else:
            expected = f"1m{whole - 60}{f'.{frac:03d}'.rstrip('0') if frac else ''}s"
        assert format_duration(ms / 1000) == expected, ms


def test_resets_of_different_windows_are_written_each() -> None:
    """The tokens' reset is written on its own when it is not the requests' (written once
    when they are the same)."""
    same = RateState(60, 59, 59.817358, 1000, 900, 59.817358)
    assert dict(rate_limit_headers(same))[b"x-ratelimit-reset-tokens"] == b"59.818s"
    apart = RateState(60, 59, 1.5, 1000, 900, 0.25)
    headers = dict(rate_limit_headers(apart))
    assert headers[b"x-ratelimit-reset-requests"] == b"1.5s"
    assert headers[b"x-ratelimit-reset-tokens"] == b"250ms"


def test_headers_for_both_limits() -> None:
    state = RateState(
        limit_requests=60,
        remaining_requests=59,
        reset_requests_s=1.0,
        limit_tokens=150_000,
        remaining_tokens=149_984,
        reset_tokens_s=0.006,
    )
    assert rate_limit_headers(state) == [
        (b"x-ratelimit-limit-requests", b"60"),
        (b"x-ratelimit-remaining-requests", b"59"),
        (b"x-ratelimit-reset-requests", b"1s"),
        (b"x-ratelimit-limit-tokens", b"150000"),
        (b"x-ratelimit-remaining-tokens", b"149984"),
        (b"x-ratelimit-reset-tokens", b"6ms"),
    ]


def test_only_configured_limits_get_headers() -> None:
    requests_only = RateState(limit_requests=10, remaining_requests=0, reset_requests_s=30)
    assert [name for name, _ in rate_limit_headers(requests_only)] == [
        b"x-ratelimit-limit-requests",
        b"x-ratelimit-remaining-requests",
        b"x-ratelimit-reset-requests",
    ]
    tokens_only = RateState(limit_tokens=100, remaining_tokens=5, reset_tokens_s=90)
    assert dict(rate_limit_headers(tokens_only))[b"x-ratelimit-reset-tokens"] == b"1m30s"
    assert len(rate_limit_headers(tokens_only)) == 3
    # A degraded admission (Redis away, open mode) carries no headers at all.
    assert rate_limit_headers(RateState()) == []


def test_remaining_is_never_negative() -> None:
    state = RateState(limit_tokens=100, remaining_tokens=-40)
    assert dict(rate_limit_headers(state))[b"x-ratelimit-remaining-tokens"] == b"0"


@pytest.mark.parametrize(
    ("seconds", "value"),
    [(0, b"1"), (0.2, b"1"), (1.0, b"1"), (1.01, b"2"), (29.75, b"30"), (3600, b"3600")],
)
def test_retry_after_is_whole_seconds_rounded_up_and_at_least_one(
    seconds: float, value: bytes
) -> None:
    assert retry_after_header(seconds) == (b"retry-after", value)


def test_limits_are_written_right_however_many_were_seen() -> None:
    """The limit fields are remembered per limit (and forgotten past a bound): each response
    still names its own key's limits, a requests limit never a tokens one."""
    for rpm in [*range(1, 3000, 7), 60, 1, 60]:
        tpm = rpm * 1000 + 1
        state = RateState(rpm, 0, 1.0, tpm, 0, 1.0)
        fields = dict(rate_limit_headers(state))
        assert fields[b"x-ratelimit-limit-requests"] == str(rpm).encode()
        assert fields[b"x-ratelimit-limit-tokens"] == str(tpm).encode()
        only_tokens = dict(rate_limit_headers(RateState(None, None, 0.0, rpm, 0, 1.0)))
        assert only_tokens[b"x-ratelimit-limit-tokens"] == str(rpm).encode()
