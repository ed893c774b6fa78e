"""Random traffic through both backends on one clock: every admission, denial, wait,
rate-limit state and usage report must be the same. The Redis windows keep running totals
and slide by deleting only the buckets that left them; this is the check that the totals
never drift from the buckets (settles that clamp at zero, windows that empty, idle gaps
longer than the window, midnight and month ends)."""

from __future__ import annotations

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.limits.base import Admission, Reservation
from gateway.limits.memory import MemoryLimiter
from gateway.limits.redis_store import RedisLimiter
from tests.limits.limits_support import FakeClock, key, run_with, running, utc

pytestmark = pytest.mark.redis

step = st.one_of(
    st.tuples(st.just("advance"), st.sampled_from([0.0, 0.3, 0.9, 1.0, 7.5, 30.0, 59.0, 61.0])),
    st.tuples(st.just("admit"), st.integers(0, 400)),
    st.tuples(st.just("settle"), st.integers(0, 600)),
)


def _same(a: Admission, b: Admission) -> None:
    assert (a.allowed, a.denied) == (b.allowed, b.denied)
    assert a.retry_after == pytest.approx(b.retry_after, abs=2e-3)
    sa, sb = a.state, b.state
    assert (sa.limit_requests, sa.remaining_requests) == (sb.limit_requests, sb.remaining_requests)
    assert (sa.limit_tokens, sa.remaining_tokens) == (sb.limit_tokens, sb.remaining_tokens)
    assert sa.reset_requests_s == pytest.approx(sb.reset_requests_s, abs=2e-3)
    assert sa.reset_tokens_s == pytest.approx(sb.reset_tokens_s, abs=2e-3)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    steps=st.lists(step, min_size=1, max_size=60),
    start=st.sampled_from([utc(2025, 3, 10, 12), utc(2025, 1, 31, 23, 59, 30)]),
)
def test_memory_and_redis_give_the_same_answers(
    redis_url: str, steps: list[tuple[str, float]], start: float
) -> None:
    with redis.Redis.from_url(redis_url) as probe:
        probe.flushall()
    clock = FakeClock(start + 0.25)
    k = key(rpm=12, tpm=1500, max_concurrent=6, daily_tokens=5000, monthly_tokens=9000)

    async def scenario() -> None:
        memory = MemoryLimiter(clock=clock)
        # Leases that outlive the test's jumps of the clock: memory's never expire.
        shared = RedisLimiter(
            redis_url, on_backend_error=lambda: None, clock=clock, lease_ttl=10**6
        )
        async with running(memory, shared):
            open_: list[tuple[Reservation, Reservation]] = []
            for n, (kind, value) in enumerate(steps):
                if kind == "advance":
                    clock.advance(value)
                elif kind == "admit":
                    a = await memory.admit(k, int(value), f"r{n}")
                    b = await shared.admit(k, int(value), f"r{n}")
                    _same(a, b)
                    if a.reservation is not None and b.reservation is not None:
                        open_.append((a.reservation, b.reservation))
                elif open_:
                    ra, rb = open_.pop(int(value) % len(open_))
                    used = int(value) % 500
                    await memory.settle(ra, used)
                    await shared.settle(rb, used)
            (ua,) = await memory.usage((k,))
            (ub,) = await shared.usage((k,))
            assert ua == ub

    run_with(scenario())
