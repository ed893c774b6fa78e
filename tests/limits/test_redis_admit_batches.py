"""Admissions of one key that wait together leave as one script call (ADMIT_MANY), with the
verdicts, rate-limit states and Redis state of the same admissions made one after another
(ADMIT each): proven against a second key admitted one by one, on one Redis and on a
Redis Cluster; and a batch's failure fails each of its admissions as one call's does."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from gateway.config import BackendFailure, Budget, KeyConfig, Limits
from gateway.limits import redis_lua
from gateway.limits.base import Admission, LimiterUnavailable
from gateway.limits.redis_admit import ADMITS_PER_CALL
from gateway.limits.redis_store import RedisLimiter, key_names
from tests.limits.limits_support import FakeClock, run_with, running, utc
from tests.support.redis_cluster import RedisCluster
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.redis

T0 = utc(2025, 3, 31, 23, 58, 0) + 0.375
"""Two minutes before a new UTC day and month: a case at T0 + 120 or later is the first
admission of its day (and month), with older quota fields to prune."""
USD = 1_000_000_000
PING = b"*1\r\n$4\r\nPING\r\n"
_MANY_SHA = hashlib.sha1(redis_lua.ADMIT_MANY.encode()).hexdigest().encode()


@dataclass
class Case:
    limits: dict[str, int]
    batch: list[tuple[int, int]]
    """(tokens, cost in nano-USD) of each admission of the batch, in order."""
    at: float
    """Seconds after T0 of the batch."""
    history: list[tuple[float, int, int, int | None]] = field(default_factory=list)
    """(seconds after T0, tokens, cost, tokens used or None to keep it open) of admissions
    made one by one before the batch."""
    budget: Budget | None = None
    old_quota: dict[str, int] = field(default_factory=dict)
    """Quota fields of long gone periods, for the first admission of a day to prune."""


OLD = {"day:2025-01-02": 9, "month:2024-12": 9, "usd:day:2025-01-02": 9}


CASES = {
    "rpm": Case(
        limits={"rpm": 10},
        history=[(0, 1, 0, 1), (10, 1, 0, 1), (10.5, 1, 0, None), (30, 1, 0, 1)],
        at=40.25,
        batch=[(1, 0)] * 9,
    ),
    "rpm-in-a-busy-second": Case(
        limits={"rpm": 7},
        history=[(5, 1, 0, 1), (40, 1, 0, 1), (40.1, 1, 0, 1)],
        at=40.5,
        batch=[(1, 0)] * 8,
    ),
    "tpm-walks-the-window": Case(
        limits={"tpm": 1_000},
        history=[(0, 200, 0, 150), (3, 100, 0, None), (20, 300, 0, 320), (45, 50, 0, 50)],
        at=50.5,
        batch=[(120, 0), (60, 0), (300, 0), (5, 0), (80, 0), (1, 0)],
    ),
    "tpm-and-rpm-after-a-slide": Case(
        limits={"rpm": 6, "tpm": 700},
        history=[(0, 300, 0, 300), (1, 100, 0, 100), (30, 100, 0, 90), (61, 50, 0, 40)],
        at=61.5,
        batch=[(100, 0), (200, 0), (50, 0), (400, 0), (10, 0)],
    ),
    "max-concurrent": Case(
        limits={"max_concurrent": 5, "rpm": 100},
        history=[(0, 10, 0, None), (1, 10, 0, 10), (2, 10, 0, None)],
        at=3,
        batch=[(10, 0)] * 6,
    ),
    "quotas": Case(
        limits={"daily_tokens": 1_000, "monthly_tokens": 1_500},
        history=[(0, 400, 0, 300)],
        at=30,
        batch=[(250, 0), (250, 0), (100, 0), (500, 0), (1, 0)],
    ),
    "budgets-first-of-a-day-and-month": Case(
        limits={"rpm": 50},
        budget=Budget(daily_usd=0.01, monthly_usd=0.05),
        history=[(0, 10, 3 * USD // 1000, 10), (100, 10, 2 * USD // 1000, None)],
        at=125.5,
        batch=[(10, 0), (10, 4 * USD // 1000), (20, 5 * USD // 1000), (5, 2 * USD // 1000)]
        + [(1, 1)] * 3,
        old_quota=OLD,
    ),
    "prune-after-the-first-write-of-a-day": Case(
        # 3 old fields: more than 4 only once the first admission wrote its day and month
        limits={"daily_tokens": 100},
        at=121,
        batch=[(30, 0)] * 5,
        old_quota=OLD,
    ),
    "no-prune-when-only-a-later-spend-adds-fields": Case(
        # 2 old fields + day + month: 4, not pruned; the spend fields come after the first
        # admission of the day, which alone prunes
        limits={"rpm": 3},
        budget=Budget(daily_usd=1.0),
        at=121,
        batch=[(5, 0), (5, USD // 100), (5, USD // 100), (5, 0)],
        old_quota={"day:2025-01-02": 9, "month:2024-12": 9},
    ),
    "zero-tokens-on-a-new-day": Case(
        limits={"daily_tokens": 10, "rpm": 20},
        history=[(0, 5, 0, 5)],
        at=121,
        batch=[(0, 0), (0, 0), (4, 0), (6, 0), (3, 0)],
        old_quota=OLD,
    ),
    "every-limit": Case(
        limits={
            "rpm": 40,
            "tpm": 5_000,
            "max_concurrent": 30,
            "daily_tokens": 4_000,
            "monthly_tokens": 100_000,
        },
        budget=Budget(daily_usd=1.0),
        history=[(2, 500, USD // 10, 400), (20, 800, USD // 5, None), (59, 100, 0, 100)],
        at=60.75,
        batch=[(100 + 37 * i, (i % 3) * USD // 50) for i in range(30)],
    ),
    "more-than-one-call": Case(
        limits={"rpm": 100, "tpm": 10**6},
        history=[(0, 7, 0, 7)],
        at=1.5,
        batch=[(i, 0) for i in range(ADMITS_PER_CALL + 50)],
    ),
}


def _key(key_id: str, case: Case) -> KeyConfig:
    return KeyConfig(
        id=key_id, key_sha256="0" * 64, limits=Limits(**case.limits), budget=case.budget
    )


def _verdict(admission: Admission) -> tuple[Any, ...]:
    """Everything an admission says but its lease id (minted per admission)."""
    r = admission.reservation
    held = None if r is None else (r.tokens, r.admitted_at, r.cost, r.degraded)
    return (admission.allowed, admission.denied, admission.retry_after, admission.state, held)


def _state(probe: redis.Redis, key_id: str) -> dict[str, Any]:
    """A key's Redis state: hashes and the seconds set whole, leases as their expiries (the
    ids are minted per admission), and whether each key expires (its TTL, to 2 s)."""
    rpm, tpm, quota, leases, seconds = key_names("gw", key_id)
    return {
        "rpm": probe.hgetall(rpm),
        "tpm": probe.hgetall(tpm),
        "quota": probe.hgetall(quota),
        "seconds": probe.zrange(seconds, 0, -1, withscores=True),
        "leases": sorted(score for _, score in probe.zrange(leases, 0, -1, withscores=True)),
        "ttl": [_ttl(probe.pttl(name)) for name in (rpm, tpm, quota, leases, seconds)],
    }


def _ttl(pttl: int) -> int:
    return pttl if pttl < 0 else round(pttl / 2000)


async def _history(limiter: RedisLimiter, k: KeyConfig, case: Case, clock: FakeClock) -> None:
    for offset, tokens, cost, used in case.history:
        clock.now = T0 + offset
        admission = await limiter.admit(k, tokens, "history", cost)
        assert admission.allowed and admission.reservation is not None
        if used is not None:
            await limiter.settle(admission.reservation, used, cost // 2)


Probe = Callable[[str], redis.Redis]


def _check_batches_equal_sequential(url: str, probe_of: Probe, name: str) -> None:
    case = CASES[name]
    seq, bat = _key(f"seq-{name}", case), _key(f"bat-{name}", case)

    async def scenario() -> None:
        errors: list[str] = []
        clock = FakeClock(T0)
        limiter = RedisLimiter(url, on_backend_error=lambda: errors.append("error"), clock=clock)
        async with running(limiter):
            await limiter.usage((seq, bat))  # a Cluster client learns both keys' masters
            if case.old_quota:
                for k in (seq, bat):
                    with probe_of(k.id) as probe:
                        probe.hset(key_names("gw", k.id)[2], mapping=case.old_quota)  # type: ignore[arg-type]
            for k in (seq, bat):
                await _history(limiter, k, case, clock)
            clock.now = T0 + case.at

            one_by_one = [
                await limiter.admit(seq, tokens, f"r{i}", cost)
                for i, (tokens, cost) in enumerate(case.batch)
            ]

            sent: list[bytes] = []
            send_nowait = limiter._client.send_nowait

            def recording(command: bytes, delay: float = 0.0) -> Any:
                sent.append(command)
                return send_nowait(command, delay)

            limiter._client.send_nowait = recording  # type: ignore[method-assign]
            # Something in flight: the connection is busy, so every admission of this loop
            # turn waits for the batch.
            ping = send_nowait(PING)
            assert ping is not None
            together = await asyncio.gather(
                *(
                    limiter.admit(bat, tokens, f"r{i}", cost)
                    for i, (tokens, cost) in enumerate(case.batch)
                )
            )
            assert await ping in ("PONG", True)  # a Cluster's through redis-py: True
            limiter._client.send_nowait = send_nowait  # type: ignore[method-assign]
            # The first admission leaves at once as ADMIT (a Cluster's through `send`, not
            # recorded here); the others as ADMIT_MANY calls of ADMITS_PER_CALL at most.
            many = [c for c in sent if _MANY_SHA in c[:120]]
            assert len(many) == -(-(len(case.batch) - 1) // ADMITS_PER_CALL)
            assert len(sent) - len(many) <= 1

            assert [_verdict(a) for a in together] == [_verdict(a) for a in one_by_one]
            allowed = sum(a.allowed for a in together)
            assert 0 < allowed < len(case.batch), "the case must admit some and deny some"
            with probe_of(seq.id) as probe:
                expected = _state(probe, seq.id)
            with probe_of(bat.id) as probe:
                assert _state(probe, bat.id) == expected
            # The same counts from here on: one more admission of each agrees too.
            clock.advance(1)
            after = [await limiter.admit(k, 1, "after", 1) for k in (seq, bat)]
            assert _verdict(after[0]) == _verdict(after[1])
        assert errors == []

    run_with(scenario())


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_batch_admits_as_the_same_admissions_one_by_one(redis_url: str, name: str) -> None:
    def probe_of(key_id: str) -> redis.Redis:
        return redis.Redis.from_url(redis_url, decode_responses=True)

    _check_batches_equal_sequential(redis_url, probe_of, name)


@pytest.mark.parametrize("name", ["every-limit", "budgets-first-of-a-day-and-month"])
def test_a_batch_on_a_cluster_admits_as_one_by_one(redis_cluster: RedisCluster, name: str) -> None:
    def probe_of(key_id: str) -> redis.Redis:
        port = redis_cluster.master_of(key_slot(key_names("gw", key_id)[0].encode()))
        return redis.Redis(host="127.0.0.1", port=port, decode_responses=True)

    _check_batches_equal_sequential(redis_cluster.url, probe_of, name)


def test_a_keys_first_admission_of_a_turn_is_a_plain_admit_sent_at_once(redis_url: str) -> None:
    """On a busy connection the first admission of each key in a loop turn leaves at once as
    ADMIT (a lone request's path); the key's next ones leave together at the next turn,
    as ADMIT_MANY, or as ADMIT when only one waits."""

    async def scenario() -> None:
        limiter = RedisLimiter(redis_url, on_backend_error=lambda: None)
        async with running(limiter):
            a, b, c = (_key(f"turn-{name}", Case({"rpm": 10}, [], 0)) for name in "abc")
            sent: list[bytes] = []
            send_nowait = limiter._client.send_nowait

            def recording(command: bytes, delay: float = 0.0) -> Any:
                sent.append(command)
                return send_nowait(command, delay)

            ping = send_nowait(PING)
            limiter._client.send_nowait = recording  # type: ignore[method-assign]
            order = ((a, "a1"), (b, "b1"), (b, "b2"), (c, "c1"), (b, "b3"), (c, "c2"))
            results = await asyncio.gather(*(limiter.admit(k, 1, rid) for k, rid in order))
            assert ping is not None and await ping == "PONG"
            assert all(r.allowed for r in results)
            assert [r.state.remaining_requests for r in results] == [9, 9, 8, 9, 7, 8]
            # a1, b1, c1 at once; then b2 + b3 as one call, c2 alone
            assert [_MANY_SHA in command[:120] for command in sent] == [False] * 3 + [True, False]
            assert [command.count(b"turn-") // 5 for command in sent] == [1, 1, 1, 1, 1]

    run_with(scenario())


def test_a_batch_answered_noscript_is_loaded_sent_again_and_counted_once(redis_url: str) -> None:
    async def scenario() -> None:
        errors: list[str] = []
        limiter = RedisLimiter(redis_url, on_backend_error=lambda: errors.append("error"))
        async with running(limiter):
            k = _key("noscript-batch", Case({"rpm": 3}, [], 0))
            with redis.Redis.from_url(redis_url) as probe:
                probe.script_flush()
            ping = limiter._client.send_nowait(PING)
            results = await asyncio.gather(*(limiter.admit(k, 1, f"r{i}") for i in range(5)))
            assert ping is not None and await ping == "PONG"
            assert [r.allowed for r in results] == [True] * 3 + [False] * 2
            (usage,) = await limiter.usage((k,))
            assert usage.requests_minute == 3 and usage.concurrent == 3
        assert errors == []

    run_with(scenario())


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_a_failed_batch_fails_each_admission_and_each_settle_it_carried(
    own_redis: RedisServer, mode: BackendFailure
) -> None:
    """Redis stops answering (CLIENT PAUSE) while a batch carrying two settles is on its
    way: the call times out, and each of its admissions follows the failure mode and counts
    one backend error, as one timed-out call does; each settle counts one too."""

    async def scenario() -> None:
        errors: list[str] = []
        limiter = RedisLimiter(
            own_redis.url,
            on_backend_error=lambda: errors.append("error"),
            failure_mode=mode,
            socket_timeout=0.3,
        )
        async with running(limiter):
            k = _key("failing-batch", Case({"rpm": 100}, [], 0))
            held = [await limiter.admit(k, 1, f"h{i}") for i in range(2)]
            with redis.Redis.from_url(own_redis.url) as probe:
                probe.execute_command("CLIENT", "PAUSE", 1500, "ALL")
                ping = limiter._client.send_nowait(PING)

                async def admit(i: int) -> Admission:
                    if i == 1:  # after the first, which leaves at once: they ride in the batch
                        for admission in held:
                            assert admission.reservation is not None
                            limiter.settle_soon(admission.reservation, 1)
                    return await limiter.admit(k, 1, f"r{i}")

                results = await asyncio.gather(
                    *(admit(i) for i in range(5)), return_exceptions=True
                )
                assert ping is not None
                with pytest.raises(redis.exceptions.TimeoutError):
                    await ping
                probe.execute_command("CLIENT", "UNPAUSE")
            if mode == "open":
                assert all(
                    isinstance(r, Admission) and r.reservation and r.reservation.degraded
                    for r in results
                ), results
            else:
                assert all(isinstance(r, LimiterUnavailable) for r in results), results
            assert errors == ["error"] * (5 + 2)

    run_with(scenario())


@pytest.mark.parametrize("batched", [1, 2])
def test_waiting_settles_ride_in_a_batch_and_run_first(redis_url: str, batched: int) -> None:
    """Settles waiting when a batch leaves ride in its call (ADMIT_MANY's, or ADMIT's for a
    batch of one) and run before its admissions: the slots they free are free for them,
    not for the key's first admission of the turn, which left before them."""

    async def scenario() -> None:
        errors: list[str] = []
        limiter = RedisLimiter(redis_url, on_backend_error=lambda: errors.append("error"))
        async with running(limiter):
            k = _key(f"ride-{batched}", Case({"max_concurrent": 2, "tpm": 10_000}, [], 0))
            held = [await limiter.admit(k, 100, f"h{i}") for i in range(2)]

            async def admit(i: int) -> Admission:
                if i == 1:
                    for admission in held:
                        assert admission.reservation is not None
                        limiter.settle_soon(admission.reservation, 10)
                return await limiter.admit(k, 100, f"r{i}")

            with redis.Redis.from_url(redis_url) as probe:
                before = int(probe.info("commandstats")["cmdstat_evalsha"]["calls"])
                ping = limiter._client.send_nowait(PING)
                results = await asyncio.gather(*(admit(i) for i in range(1 + batched)))
                assert ping is not None and await ping == "PONG"
                await asyncio.sleep(0.05)  # past the settle delay: nothing else leaves
                calls = int(probe.info("commandstats")["cmdstat_evalsha"]["calls"]) - before
            assert calls == 2  # the first admission's, the batch's (carrying the settles)
            assert [r.allowed for r in results] == [False] + [True] * batched
            assert results[0].denied == "max_concurrent"
            assert results[1].state.used_tokens == 2 * 10 + 100
            (usage,) = await limiter.usage((k,))
            assert usage.concurrent == batched
            assert usage.tokens_minute == 2 * 10 + 100 * batched
        assert errors == []

    run_with(scenario())
