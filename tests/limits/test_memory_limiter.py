"""What only the in-memory backend promises: bounded memory and the embedded default."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.config import GatewayConfig, ModelConfig, ProviderConfig
from gateway.limits import build_limiter
from gateway.limits.memory import MemoryLimiter, utc_periods
from gateway.limits.redis_store import RedisLimiter
from tests.limits.limits_support import FakeClock, key, run_with, running, utc


def test_memory_stays_bounded_under_long_traffic() -> None:
    async def scenario() -> None:
        clock = FakeClock(utc(2025, 1, 30))
        limiter = MemoryLimiter(clock=clock)
        k = key(rpm=10**6)
        # Three days (across a month end) of a request every 7 s, each settled.
        for i in range(3 * 86400 // 7):
            admission = await limiter.admit(k, 3, f"r{i}")
            assert admission.reservation is not None
            await limiter.settle(admission.reservation, 2)
            clock.advance(7)
        state = limiter._keys["team-a"]
        assert len(state.requests.counts) <= 60 and len(state.tokens.counts) <= 60
        assert len(state.days) <= 2 and len(state.months) <= 2
        assert not state.leases

    run_with(scenario())


@pytest.mark.parametrize(
    "when",
    [
        datetime(2025, 1, 31, 23, 59, 59, tzinfo=UTC),
        datetime(2024, 2, 29, 0, 0, 0, tzinfo=UTC),
        datetime(2024, 12, 31, 12, tzinfo=UTC),
        datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC),
        datetime(2100, 2, 28, tzinfo=UTC),
    ],
)
def test_utc_periods(when: datetime) -> None:
    day, day_end, month, month_end = utc_periods(when.timestamp() + 0.5)
    assert day == (when.date() - datetime(1970, 1, 1, tzinfo=UTC).date()).days
    assert day_end - when.timestamp() <= 86400
    assert datetime.fromtimestamp(day_end, UTC).time().hour == 0
    assert month == when.year * 12 + when.month - 1
    end = datetime.fromtimestamp(month_end, UTC)
    assert (end.day, end.hour) == (1, 0) and end > when
    assert (end.year * 12 + end.month - 1) == month + 1


def test_memory_is_always_ready() -> None:
    async def scenario() -> None:
        limiter = MemoryLimiter()
        async with running(limiter):
            assert await limiter.ready()

    run_with(scenario())


def _config(redis_url: str) -> GatewayConfig:
    return GatewayConfig(
        providers=(ProviderConfig(name="demo", type="mock"),),
        models=(ModelConfig(name="m", provider="demo"),),
        keys=(key(),),
        redis_url=redis_url,
        limits_backend_failure="closed",
    )


def test_build_limiter_picks_redis_only_when_configured() -> None:
    async def scenario() -> None:
        assert isinstance(build_limiter(_config(""), lambda: None), MemoryLimiter)
        limiter = build_limiter(_config("redis://127.0.0.1:1/0"), lambda: None)
        assert isinstance(limiter, RedisLimiter)
        assert limiter._failure_mode == "closed"
        await limiter.aclose()  # built, never started: nothing connected

    run_with(scenario())
