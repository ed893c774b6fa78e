"""The semantics of `gateway.limits.base`, proven against both backends alike."""

from __future__ import annotations

import asyncio

import pytest

from gateway.limits.base import Admission, Reservation
from tests.limits.limits_support import FakeClock, LimiterFactory, key, run_with, running, utc

T0 = utc(2025, 3, 14, 12, 0, 0) + 0.25
"""A mid-month, mid-day instant with a fraction, so no period boundary is near."""


async def _settle_all(limiter: object, admissions: list[Admission], used: int = 0) -> None:
    for admission in admissions:
        if admission.reservation is not None:
            await limiter.settle(admission.reservation, used)  # type: ignore[attr-defined]


def test_rpm_admits_exactly_the_limit_of_concurrent_requests(
    limiter_factory: LimiterFactory,
) -> None:
    async def scenario() -> None:
        limiter = limiter_factory()
        async with running(limiter):
            k = key(rpm=10)
            results = await asyncio.gather(*(limiter.admit(k, 1, f"r{i}") for i in range(30)))
            allowed = [a for a in results if a.allowed]
            denied = [a for a in results if not a.allowed]
            assert len(allowed) == 10
            assert {a.denied for a in denied} == {"rpm"}
            assert all(0 < a.retry_after <= 60 for a in denied)
            assert all(a.state.remaining_requests == 0 for a in denied)
            assert all(a.reservation is None for a in denied)
            (usage,) = await limiter.usage((k,))
            assert usage.requests_minute == 10
            assert usage.remaining["rpm"] == 0
            await _settle_all(limiter, allowed, used=1)

    run_with(scenario())


def test_a_denied_request_counts_nothing(limiter_factory: LimiterFactory) -> None:
    async def scenario() -> None:
        limiter = limiter_factory()
        async with running(limiter):
            k = key(max_concurrent=1, rpm=100, tpm=100_000, daily_tokens=10**6)
            first = await limiter.admit(k, 100, "a")
            assert first.allowed
            second = await limiter.admit(k, 500, "b")
            assert not second.allowed and second.denied == "max_concurrent"
            (usage,) = await limiter.usage((k,))
            assert (usage.requests_minute, usage.tokens_minute) == (1, 100)
            assert (usage.tokens_day, usage.tokens_month, usage.concurrent) == (100, 100, 1)
            assert first.reservation is not None
            await limiter.settle(first.reservation, 100)

    run_with(scenario())


def test_max_concurrent_denies_the_next_and_frees_a_slot_on_settle(
    limiter_factory: LimiterFactory,
) -> None:
    async def scenario() -> None:
        limiter = limiter_factory()
        async with running(limiter):
            k = key(max_concurrent=3)
            held = [await limiter.admit(k, 10, f"r{i}") for i in range(3)]
            assert all(a.allowed and a.reservation and a.reservation.lease for a in held)
            fourth = await limiter.admit(k, 10, "r3")
            assert not fourth.allowed
            assert fourth.denied == "max_concurrent"
            assert fourth.retry_after >= 1
            (usage,) = await limiter.usage((k,))
            assert usage.concurrent == 3 and usage.remaining["max_concurrent"] == 0
            assert held[0].reservation is not None
            await limiter.settle(held[0].reservation, 5)
            again = await limiter.admit(k, 10, "r4")
            assert again.allowed
            await _settle_all(limiter, [*held[1:], again])
            (usage,) = await limiter.usage((k,))
            assert usage.concurrent == 0

    run_with(scenario())


def test_a_repeated_request_id_takes_a_slot_per_admission(
    limiter_factory: LimiterFactory,
) -> None:
    """The lease is minted by the limiter: six admissions naming one request id hold six
    leases, so max_concurrent 2 admits two and settling one frees exactly one slot."""

    async def scenario() -> None:
        limiter = limiter_factory()
        async with running(limiter):
            k = key(max_concurrent=2)
            results = await asyncio.gather(*(limiter.admit(k, 1, "same-id") for _ in range(6)))
            held = [r.reservation for r in results if r.reservation is not None]
            assert len(held) == 2
            assert {r.denied for r in results if not r.allowed} == {"max_concurrent"}
            assert held[0].lease and held[0].lease != held[1].lease
            assert {r.request_id for r in held} == {"same-id"}
            (usage,) = await limiter.usage((k,))
            assert usage.concurrent == 2
            await limiter.settle(held[0], 1)
            again = await asyncio.gather(*(limiter.admit(k, 1, "same-id") for _ in range(3)))
            assert sum(r.allowed for r in again) == 1
            (usage,) = await limiter.usage((k,))
            assert usage.concurrent == 2

    run_with(scenario())


@pytest.mark.parametrize("limit", ["tpm", "daily_tokens", "monthly_tokens"])
def test_concurrent_reservations_overshoot_a_token_limit_by_at_most_one(
    limiter_factory: LimiterFactory, limit: str
) -> None:
    async def scenario() -> None:
        limiter = limiter_factory()
        async with running(limiter):
            k = key("team-a", **{limit: 1000})
            results = await asyncio.gather(*(limiter.admit(k, 30, f"r{i}") for i in range(100)))
            allowed = [a for a in results if a.allowed]
            # Admitted while the count was below 1000: 33 * 30 = 990 < 1000 lets a 34th in.
            assert len(allowed) == 34
            assert {a.denied for a in results if not a.allowed} == {limit}
            (usage,) = await limiter.usage((k,))
            for used in (usage.tokens_minute, usage.tokens_day, usage.tokens_month):
                assert 1000 <= used <= 1000 + 30
            real = [i % 25 for i in range(len(allowed))]
            await asyncio.gather(
                *(
                    limiter.settle(a.reservation, n)
                    for a, n in zip(allowed, real, strict=True)
                    if a.reservation is not None
                )
            )
            (usage,) = await limiter.usage((k,))
            assert usage.tokens_minute == usage.tokens_day == usage.tokens_month == sum(real)
            assert usage.concurrent == 0

    run_with(scenario())


def test_a_reservation_above_the_limit_is_admitted_into_an_empty_window(
    limiter_factory: LimiterFactory,
) -> None:
    async def scenario() -> None:
        limiter = limiter_factory()
        async with running(limiter):
            k = key(tpm=100)
            big = await limiter.admit(k, 500, "big")
            assert big.allowed and big.state.remaining_tokens == 0
            assert not (await limiter.admit(k, 1, "next")).allowed

    run_with(scenario())


def test_tpm_is_a_rolling_window_of_one_second_buckets(
    limiter_factory: LimiterFactory,
) -> None:
    async def scenario() -> None:
        clock = FakeClock(T0)
        limiter = limiter_factory(clock=clock)
        async with running(limiter):
            k = key(tpm=100, rpm=1000)
            first = await limiter.admit(k, 60, "a")
            assert first.allowed and first.state.remaining_tokens == 40
            clock.advance(30)
            second = await limiter.admit(k, 50, "b")
            assert second.allowed and second.state.remaining_tokens == 0
            # The 60 admitted at T0 (bucket T0 - 0.25) leave the window at T0 + 59.75.
            assert second.state.reset_tokens_s == pytest.approx(29.75, abs=1e-3)
            clock.advance(1)
            third = await limiter.admit(k, 10, "c")
            assert not third.allowed and third.denied == "tpm"
            assert third.retry_after == pytest.approx(28.75, abs=1e-3)
            clock.advance(28.7)
            assert not (await limiter.admit(k, 10, "d")).allowed
            clock.advance(0.1)
            fourth = await limiter.admit(k, 10, "e")
            assert fourth.allowed and fourth.state.remaining_tokens == 40
            (usage,) = await limiter.usage((k,))
            assert usage.tokens_minute == 60 and usage.requests_minute == 2
            clock.advance(120)
            (usage,) = await limiter.usage((k,))
            assert (usage.tokens_minute, usage.requests_minute) == (0, 0)
            assert usage.tokens_day == 120

    run_with(scenario())


def test_rpm_retry_after_waits_for_enough_buckets_to_leave(
    limiter_factory: LimiterFactory,
) -> None:
    async def scenario() -> None:
        clock = FakeClock(T0)
        limiter = limiter_factory(clock=clock)
        async with running(limiter):
            k = key(rpm=3)
            for i in range(3):
                assert (await limiter.admit(k, 0, f"r{i}")).allowed
                clock.advance(10)
            denied = await limiter.admit(k, 0, "r3")
            # Buckets at T0, T0+10, T0+20 (floored); one must leave: T0 - 0.25 + 60.
            assert denied.denied == "rpm"
            assert denied.retry_after == pytest.approx(30 - 0.25, abs=1e-3)
            assert denied.state.remaining_requests == 0
            assert denied.state.reset_requests_s == pytest.approx(29.75, abs=1e-3)

    run_with(scenario())


def test_settle_corrects_the_bucket_and_period_of_its_admission(
    limiter_factory: LimiterFactory,
) -> None:
    async def scenario() -> None:
        clock = FakeClock(T0)
        limiter = limiter_factory(clock=clock)
        async with running(limiter):
            k = key(tpm=1000)
            a = await limiter.admit(k, 100, "a")
            clock.advance(5)
            b = await limiter.admit(k, 100, "b")
            assert a.reservation is not None and b.reservation is not None
            await limiter.settle(a.reservation, 10)
            (usage,) = await limiter.usage((k,))
            assert (usage.tokens_minute, usage.tokens_day) == (110, 110)
            # a's bucket leaves the window first: only b's 100 remain.
            clock.advance(56)
            (usage,) = await limiter.usage((k,))
            assert usage.tokens_minute == 100
            # b's bucket is gone too when it settles: the window gets no ghost bucket,
            # the day and month still get the real usage.
            clock.advance(10)
            await limiter.settle(b.reservation, 400)
            (usage,) = await limiter.usage((k,))
            assert (usage.tokens_minute, usage.tokens_day, usage.tokens_month) == (0, 410, 410)

    run_with(scenario())


def test_daily_quota_resets_at_midnight_utc(limiter_factory: LimiterFactory) -> None:
    async def scenario() -> None:
        clock = FakeClock(utc(2025, 1, 31, 23, 59, 50))
        limiter = limiter_factory(clock=clock)
        async with running(limiter):
            k = key(daily_tokens=1000)
            january = await limiter.admit(k, 1000, "jan")
            denied = await limiter.admit(k, 1, "late")
            assert denied.denied == "daily_tokens"
            assert denied.retry_after == pytest.approx(10, abs=1e-3)
            clock.advance(20)
            february = await limiter.admit(k, 300, "feb")
            assert february.allowed
            # Settling January's reservation after midnight corrects January, not today.
            assert january.reservation is not None
            await limiter.settle(january.reservation, 400)
            (usage,) = await limiter.usage((k,))
            assert (usage.tokens_day, usage.tokens_month) == (300, 300)
            assert usage.remaining["daily_tokens"] == 700

    run_with(scenario())


@pytest.mark.parametrize(
    ("now", "month_end"),
    [
        (utc(2025, 2, 28, 23, 0, 0), utc(2025, 3, 1)),
        (utc(2024, 2, 29, 12, 0, 0), utc(2024, 3, 1)),
        (utc(2024, 12, 31, 23, 59, 59) + 0.5, utc(2025, 1, 1)),
        (utc(2000, 2, 15), utc(2000, 3, 1)),
        (utc(2100, 2, 28, 1), utc(2100, 3, 1)),
        (utc(2025, 7, 1), utc(2025, 8, 1)),
    ],
)
def test_monthly_quota_lasts_until_the_first_of_the_next_month_utc(
    limiter_factory: LimiterFactory, now: float, month_end: float
) -> None:
    async def scenario() -> None:
        clock = FakeClock(now)
        limiter = limiter_factory(clock=clock)
        async with running(limiter):
            k = key(monthly_tokens=100, daily_tokens=10**9)
            assert (await limiter.admit(k, 100, "a")).allowed
            denied = await limiter.admit(k, 1, "b")
            assert denied.denied == "monthly_tokens"
            assert denied.retry_after == pytest.approx(month_end - now, abs=1e-3)
            clock.advance(month_end - now)
            assert (await limiter.admit(k, 1, "c")).allowed

    run_with(scenario())


def test_the_longest_wait_names_the_denial(limiter_factory: LimiterFactory) -> None:
    async def scenario() -> None:
        clock = FakeClock(T0)
        limiter = limiter_factory(clock=clock)
        async with running(limiter):
            k = key(rpm=1, daily_tokens=10)
            assert (await limiter.admit(k, 10, "a")).allowed
            denied = await limiter.admit(k, 1, "b")
            # rpm frees up in a minute, the daily quota only at midnight: the quota binds.
            assert denied.denied == "daily_tokens"
            assert denied.retry_after == pytest.approx(utc(2025, 3, 15) - T0, abs=1e-3)

    run_with(scenario())


def test_keys_are_limited_independently_and_unlimited_keys_are_counted(
    limiter_factory: LimiterFactory,
) -> None:
    async def scenario() -> None:
        limiter = limiter_factory()
        async with running(limiter):
            limited, free = key("team-a", rpm=1), key("team-b")
            assert (await limiter.admit(limited, 5, "a1")).allowed
            assert not (await limiter.admit(limited, 5, "a2")).allowed
            results = [await limiter.admit(free, 7, f"b{i}") for i in range(5)]
            assert all(a.allowed for a in results)
            assert results[0].state.limit_requests is None
            assert results[0].state.limit_tokens is None
            a_usage, b_usage = await limiter.usage((limited, free))
            assert (a_usage.key_id, a_usage.requests_minute) == ("team-a", 1)
            assert (b_usage.key_id, b_usage.requests_minute, b_usage.tokens_day) == (
                "team-b",
                5,
                35,
            )
            assert b_usage.concurrent == 5
            assert b_usage.limits["rpm"] is None and b_usage.remaining["rpm"] is None

    run_with(scenario())


def test_rate_state_after_admission(limiter_factory: LimiterFactory) -> None:
    async def scenario() -> None:
        clock = FakeClock(T0)
        limiter = limiter_factory(clock=clock)
        async with running(limiter):
            k = key(rpm=60, tpm=1000)
            a = await limiter.admit(k, 250, "a")
            assert a.state.limit_requests == 60 and a.state.remaining_requests == 59
            assert a.state.limit_tokens == 1000 and a.state.remaining_tokens == 750
            assert a.state.reset_requests_s == pytest.approx(59.75, abs=1e-3)
            reservation = a.reservation
            assert reservation is not None
            assert reservation.admitted_at == pytest.approx(T0, abs=1e-3)
            assert reservation == Reservation(
                key_id="team-a",
                request_id="a",
                tokens=250,
                admitted_at=reservation.admitted_at,
                lease=reservation.lease,
            )

    run_with(scenario())
