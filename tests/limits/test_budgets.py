"""Per-key budgets in nano-dollars, proven against both backends alike."""

from __future__ import annotations

import asyncio

from gateway.config import Budget, KeyConfig, Limits
from gateway.limits.base import Admission
from tests.limits.limits_support import FakeClock, LimiterFactory, run_with, running, utc

T0 = utc(2025, 3, 14, 12, 0, 0) + 0.25
USD = 1_000_000_000


def budget_key(daily: float | None = None, monthly: float | None = None) -> KeyConfig:
    return KeyConfig(
        id="team-a",
        key_sha256="0" * 64,
        limits=Limits(),
        budget=Budget(daily_usd=daily, monthly_usd=monthly),
    )


def test_a_budget_for_n_requests_admits_n_then_refuses_until_the_day_ends(
    limiter_factory: LimiterFactory,
) -> None:
    async def scenario() -> None:
        clock = FakeClock(T0)
        limiter = limiter_factory(clock=clock)
        async with running(limiter):
            k = budget_key(daily=0.003)  # three requests of $0.001 each
            for i in range(3):
                admission = await limiter.admit(k, 100, f"r{i}", 5 * USD // 1000)
                assert admission.allowed, i
                assert admission.reservation is not None
                assert admission.reservation.cost == 5 * USD // 1000
                await limiter.settle(admission.reservation, 80, USD // 1000)
            denied = await limiter.admit(k, 100, "r3", 5 * USD // 1000)
            assert not denied.allowed and denied.denied == "daily_usd"
            assert denied.retry_after == utc(2025, 3, 15) - T0
            (usage,) = await limiter.usage((k,))
            assert usage.spend_day_nanos == usage.spend_month_nanos == 3 * USD // 1000
            assert usage.budget == {"daily_usd": 0.003, "monthly_usd": None}
            clock.advance(utc(2025, 3, 15) - T0 + 1)
            assert (await limiter.admit(k, 100, "next-day", 1)).allowed

    run_with(scenario())


def test_open_reservations_count_against_the_budget_and_overshoot_by_one_at_most(
    limiter_factory: LimiterFactory,
) -> None:
    async def scenario() -> None:
        limiter = limiter_factory()
        async with running(limiter):
            k = budget_key(monthly=1.0)
            cost = 300_000_000  # $0.30 reserved each
            results: list[Admission] = await asyncio.gather(
                *(limiter.admit(k, 10, f"r{i}", cost) for i in range(10))
            )
            allowed = [a for a in results if a.allowed]
            # admitted while spend + reservations < $1: 0, 0.3, 0.6, 0.9 -> four
            assert len(allowed) == 4
            assert {a.denied for a in results if not a.allowed} == {"monthly_usd"}
            (usage,) = await limiter.usage((k,))
            assert usage.spend_month_nanos == 4 * cost
            # a disconnect settles what was streamed: less than reserved frees the rest
            for a in allowed:
                assert a.reservation is not None
                await limiter.settle(a.reservation, 5, 123_456_789)
            (usage,) = await limiter.usage((k,))
            assert usage.spend_month_nanos == 4 * 123_456_789
            assert (await limiter.admit(k, 10, "again", cost)).allowed

    run_with(scenario())


def test_spend_is_exact_in_nano_dollars_past_a_double_s_integer_digits(
    limiter_factory: LimiterFactory,
) -> None:
    """$5 million of spend is 5e15 nanos: still exact (below 2^53) in Lua and Python."""

    async def scenario() -> None:
        limiter = limiter_factory()
        async with running(limiter):
            k = budget_key(monthly=9_000_000.0)
            big = 5_000_000 * USD + 7
            admission = await limiter.admit(k, 1, "big", big)
            assert admission.reservation is not None
            await limiter.settle(admission.reservation, 1, big + 2)
            (usage,) = await limiter.usage((k,))
            assert usage.spend_month_nanos == big + 2

    run_with(scenario())


def test_a_key_without_a_budget_still_counts_its_spend(limiter_factory: LimiterFactory) -> None:
    async def scenario() -> None:
        limiter = limiter_factory()
        async with running(limiter):
            k = KeyConfig(id="free", key_sha256="0" * 64)
            admission = await limiter.admit(k, 10, "a", 1_000)
            assert admission.allowed and admission.reservation is not None
            await limiter.settle(admission.reservation, 10, 700)
            (usage,) = await limiter.usage((k,))
            assert (usage.spend_day_nanos, usage.spend_month_nanos) == (700, 700)
            assert usage.budget == {}

    run_with(scenario())
