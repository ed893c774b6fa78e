"""What only the Redis backend promises: shared limits across processes, one atomic round
trip per call, Cluster-ready key names, lease expiry, and behaviour when Redis is away."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from gateway.config import BackendFailure, Limits
from gateway.limits.base import LimiterUnavailable, RateState
from gateway.limits.redis_settle import SETTLE_DELAY_S, SETTLES_PER_CALL
from gateway.limits.redis_store import (
    RedisLimiter,
    _admit_args,
    _rate_state,
    key_names,
)
from gateway.limits.resp import pack_items
from tests.limits.limits_support import FakeClock, key, run_with, running, utc
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[2]


def _limiter(url: str, errors: list[str] | None = None, **options: object) -> RedisLimiter:
    sink = [] if errors is None else errors
    return RedisLimiter(url, on_backend_error=lambda: sink.append("error"), **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("cost", [0, 7_500])
@pytest.mark.parametrize("override", ["", "1767225600.250000"])
def test_admit_arguments_are_packed_as_pack_items_packs_them(cost: int, override: str) -> None:
    for tokens in (0, 1, 4_096):
        args = (tokens, cost, "host:42:a1b2c3:7", override)
        assert _admit_args(*args) == pack_items(args)


def test_rate_state_from_a_reply_for_each_set_of_limits() -> None:
    both = _rate_state(Limits(rpm=10, tpm=1000), 12, 1.5, 400, 2.25)
    assert both == RateState(
        limit_requests=10,
        remaining_requests=0,
        reset_requests_s=1.5,
        limit_tokens=1000,
        remaining_tokens=600,
        reset_tokens_s=2.25,
        used_tokens=400,
    )
    assert _rate_state(Limits(rpm=10), 3, 1.5, 400, 2.25) == RateState(
        limit_requests=10, remaining_requests=7, reset_requests_s=1.5
    )
    assert _rate_state(Limits(tpm=1000), 3, 1.5, 1200, 2.25) == RateState(
        limit_tokens=1000, remaining_tokens=0, reset_tokens_s=2.25, used_tokens=1200
    )
    assert _rate_state(Limits(max_concurrent=2), 3, 1.5, 400, 2.25) == RateState()


def test_rate_states_and_admissions_are_whole_named_tuples(redis_url: str) -> None:
    """They are made by `tuple.__new__` (`redis_store._new`), which would take a tuple short
    of a field without a word: each must equal the one its NamedTuple makes of its fields."""

    def whole(value: tuple[object, ...]) -> None:
        assert type(value)(*value) == value and len(value) == len(type(value)._fields)  # type: ignore[attr-defined]

    async def scenario() -> None:
        limiter = _limiter(redis_url, clock=FakeClock(utc(2026, 3, 1, 12)))
        async with running(limiter):
            for limits in ({}, {"rpm": 1}, {"tpm": 10}, {"rpm": 1, "tpm": 10}):
                k = key(f"whole-{len(limits)}-{sorted(limits)}", **limits)
                allowed = await limiter.admit(k, 10, "r1")
                assert allowed.allowed and allowed.reservation is not None
                whole(allowed)
                whole(allowed.state)
                if limits:
                    denied = await limiter.admit(k, 50, "r2")
                    assert not denied.allowed and denied.retry_after > 0
                    whole(denied)
                    whole(denied.state)

    run_with(scenario())


@pytest.mark.parametrize("seed", range(4))
def test_times_read_as_whole_microseconds_are_the_doubles_float_reads(seed: int) -> None:
    """ADMIT's reply gives each time as the digits of '%.6f' without the point; `admit`
    divides them by 1e6 instead of float()-ing the six-decimal string: the same double."""
    import random

    rng = random.Random(seed)
    values = [rng.uniform(0, 4e9) for _ in range(20_000)] + [
        rng.uniform(-70, 70) for _ in range(20_000)
    ]
    for value in values:
        text = f"{value:.6f}"
        assert int(text.replace(".", "")) / 1e6 == float(text), text


def test_two_limiters_share_one_limit_exactly(redis_url: str) -> None:
    async def scenario() -> None:
        a, b = _limiter(redis_url), _limiter(redis_url)
        async with running(a, b):
            k = key(rpm=10, max_concurrent=8)
            results = await asyncio.gather(
                *(lim.admit(k, 1, f"{n}{i}") for i in range(15) for n, lim in (("a", a), ("b", b)))
            )
            assert sum(r.allowed for r in results) == 8  # max_concurrent binds first
            assert {r.denied for r in results if not r.allowed} == {"max_concurrent"}
            for r in results:
                if r.reservation is not None:
                    owner = a if r.reservation.request_id.startswith("a") else b
                    await owner.settle(r.reservation, 1)
            more = await asyncio.gather(*(b.admit(k, 1, f"c{i}") for i in range(5)))
            assert sum(r.allowed for r in more) == 2  # rpm 10: 8 + 2
            (usage_a,) = await a.usage((k,))
            (usage_b,) = await b.usage((k,))
            assert usage_a == usage_b
            assert usage_a.requests_minute == 10 and usage_a.concurrent == 2

    run_with(scenario())


_WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from gateway.config import KeyConfig, Limits
    from gateway.limits.redis_store import RedisLimiter

    async def main(url, name):
        limiter = RedisLimiter(url, on_backend_error=lambda: None)
        await limiter.start()
        key = KeyConfig(id="shared", key_sha256="0" * 64, limits=Limits(rpm=25))
        try:
            results = await asyncio.gather(
                *(limiter.admit(key, 1, f"{name}-{i}") for i in range(20))
            )
            for r in results:
                if r.reservation is not None:
                    await limiter.settle(r.reservation, 1)
        finally:
            await limiter.aclose()
        print(sum(r.allowed for r in results))

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def test_processes_share_one_limit_exactly(redis_url: str) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, redis_url, f"p{n}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(3)
    ]
    admitted = 0
    for worker in workers:
        out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        admitted += int(out.strip())
    assert admitted == 25


def test_admit_and_settle_are_one_script_call_each(redis_url: str) -> None:
    async def scenario() -> None:
        limiter = _limiter(redis_url)
        async with running(limiter):
            k = key(rpm=10, tpm=1000, max_concurrent=2, daily_tokens=10**6, monthly_tokens=10**7)
            await limiter.admit(k, 1, "warm-up")
            client = limiter._client
            sent: list[str] = []
            send, send_nowait = client.send, client.send_nowait

            def name(command: bytes) -> str:
                return command.split(b"\r\n")[2].decode()  # *N, $len, the name

            async def counting(command: bytes, delay: float = 0.0) -> object:
                sent.append(name(command))
                return await send(command, delay)

            def counting_nowait(command: bytes, delay: float = 0.0) -> object:
                sent.append(name(command))
                return send_nowait(command, delay)

            client.send = counting  # type: ignore[method-assign]
            client.send_nowait = counting_nowait  # type: ignore[method-assign]
            with redis.Redis.from_url(redis_url) as probe:
                before = probe.info("commandstats")
                admission = await limiter.admit(k, 100, "r1")
                assert admission.reservation is not None
                await limiter.settle(admission.reservation, 42)
                after = probe.info("commandstats")
            assert sent == ["EVALSHA", "EVALSHA"]
            evalsha = after["cmdstat_evalsha"]["calls"] - before["cmdstat_evalsha"]["calls"]
            assert evalsha == 2
            assert "cmdstat_eval" not in after  # never fell back to sending the script

    run_with(scenario())


def test_settle_soon_needs_no_task_and_this_process_never_sees_its_own_settled_slots(
    redis_url: str,
) -> None:
    async def scenario() -> None:
        errors: list[str] = []
        limiter, other = _limiter(redis_url, errors), _limiter(redis_url)
        async with running(limiter, other):
            k = key(max_concurrent=1, tpm=10_000)
            for i in range(5):
                # Back to back: each settle waits to share a write, and the next admission
                # takes it along first, so the one slot is free again every time.
                admission = await limiter.admit(k, 100, f"r{i}")
                assert admission.allowed and admission.reservation is not None
                tasks = len(asyncio.all_tasks())
                limiter.settle_soon(admission.reservation, 30)
                assert len(asyncio.all_tasks()) == tasks
            # Another process sees the last settle once it has gone out (within the delay).
            await asyncio.sleep(SETTLE_DELAY_S + 0.05)
            (usage,) = await other.usage((k,))
            assert usage.concurrent == 0
            assert usage.tokens_minute == 5 * 30  # each reservation settled to what was used
        assert errors == []

    run_with(scenario())


def test_an_idle_settle_frees_the_slot_for_another_replica_at_once(redis_url: str) -> None:
    """One client, one request after another, through two replicas of a max_concurrent 1
    key: the settle of a request that ended with nothing else in flight leaves at once, so
    the other replica's next admission (well within the settle delay) finds the slot free."""

    async def scenario() -> None:
        a, b = _limiter(redis_url), _limiter(redis_url)
        async with running(a, b):
            k = key(max_concurrent=1)
            for i in range(10):
                here = a if i % 2 == 0 else b
                admission = await here.admit(k, 10, f"r{i}")
                assert admission.allowed, (i, admission.denied)
                assert admission.reservation is not None
                here.settle_soon(admission.reservation, 5)
                await asyncio.sleep(SETTLE_DELAY_S / 5)  # a client's turnaround, not the delay

    run_with(scenario())


def _evalsha_calls(probe: redis.Redis) -> int:
    return int(probe.info("commandstats")["cmdstat_evalsha"]["calls"])


def test_settles_that_end_together_are_one_script_call(redis_url: str) -> None:
    """A burst of ends (the scale scenario's 3,000 streams ending within a second) costs
    Redis one command, not one per request, and each reservation is still settled to its
    own usage, whatever its key."""

    async def scenario() -> None:
        errors: list[str] = []
        limiter, reader = _limiter(redis_url, errors), _limiter(redis_url)
        async with running(limiter, reader):
            keys = (
                key("burst-a", tpm=10**6),
                key("burst-b", max_concurrent=50, daily_tokens=10**6),
            )
            admissions = await asyncio.gather(
                *(limiter.admit(keys[i % 2], 100, f"r{i}") for i in range(40))
            )
            with redis.Redis.from_url(redis_url) as probe:
                before = _evalsha_calls(probe)
                # Something in flight: the settles cannot leave at once, so they wait
                # (SETTLE_DELAY_S) and leave together.
                ping = limiter._client.send_nowait(b"*1\r\n$4\r\nPING\r\n")
                assert ping is not None
                for i, admission in enumerate(admissions):
                    assert admission.reservation is not None
                    limiter.settle_soon(admission.reservation, i)
                await ping
                await asyncio.sleep(SETTLE_DELAY_S + 0.05)
                assert _evalsha_calls(probe) - before == 1
            usage = await reader.usage(keys)
            assert [u.concurrent for u in usage] == [0, 0]
            assert usage[0].tokens_minute == sum(range(0, 40, 2))
            assert usage[1].tokens_minute == usage[1].tokens_day == sum(range(1, 40, 2))
        assert errors == []

    run_with(scenario())


def test_a_burst_of_settles_is_split_into_calls_of_at_most_settles_per_call(
    redis_url: str,
) -> None:
    """One script holds Redis for its whole run: 250 ends leave as 3 calls, not one."""

    async def scenario() -> None:
        errors: list[str] = []
        limiter, reader = _limiter(redis_url, errors), _limiter(redis_url)
        async with running(limiter, reader):
            k = key("burst-split", tpm=10**6)
            admissions = await asyncio.gather(*(limiter.admit(k, 100, "r") for _ in range(250)))
            with redis.Redis.from_url(redis_url) as probe:
                before = _evalsha_calls(probe)
                ping = limiter._client.send_nowait(b"*1\r\n$4\r\nPING\r\n")
                for admission in admissions:
                    assert admission.reservation is not None
                    limiter.settle_soon(admission.reservation, 3)
                assert ping is not None
                await ping
                await asyncio.sleep(SETTLE_DELAY_S + 0.05)
                assert _evalsha_calls(probe) - before == -(-250 // SETTLES_PER_CALL) == 3
            (usage,) = await reader.usage((k,))
            assert usage.concurrent == 0 and usage.tokens_minute == 250 * 3
        assert errors == []

    run_with(scenario())


def test_waiting_settles_ride_in_the_next_admission(redis_url: str) -> None:
    """An admission leaving while settles wait carries them in its own script call, run
    first: the slot they free is free for it, and Redis runs one script for all of them."""

    async def scenario() -> None:
        errors: list[str] = []
        limiter = _limiter(redis_url, errors)
        async with running(limiter):
            k = key(max_concurrent=2, tpm=10_000)
            held = [await limiter.admit(k, 100, f"r{i}") for i in range(2)]
            assert not (await limiter.admit(k, 100, "full")).allowed
            with redis.Redis.from_url(redis_url) as probe:
                before = _evalsha_calls(probe)
                ping = limiter._client.send_nowait(b"*1\r\n$4\r\nPING\r\n")
                for admission in held:
                    assert admission.reservation is not None
                    limiter.settle_soon(admission.reservation, 10)
                after = await limiter.admit(k, 100, "next")
                assert after.allowed
                assert after.state.used_tokens == 10 * 2 + 100  # both settled first
                await asyncio.sleep(SETTLE_DELAY_S + 0.05)  # nothing left to leave later
                assert _evalsha_calls(probe) - before == 1
                assert ping is not None and await ping == "PONG"
        assert errors == []

    run_with(scenario())


def test_settles_riding_in_an_admission_answered_noscript_run_once(redis_url: str) -> None:
    """Redis lost its scripts: the admission carrying settles is answered NOSCRIPT (nothing
    ran), loaded and sent again, and every settle counts exactly once."""

    async def scenario() -> None:
        errors: list[str] = []
        limiter, reader = _limiter(redis_url, errors), _limiter(redis_url)
        async with running(limiter, reader):
            k = key("noscript-ride", max_concurrent=3, tpm=10_000)
            held = [await limiter.admit(k, 100, f"r{i}") for i in range(3)]
            with redis.Redis.from_url(redis_url) as probe:
                probe.script_flush()
            ping = limiter._client.send_nowait(b"*1\r\n$4\r\nPING\r\n")
            for admission in held:
                assert admission.reservation is not None
                limiter.settle_soon(admission.reservation, 7)
            after = await limiter.admit(k, 100, "next")
            assert after.allowed and after.state.used_tokens == 3 * 7 + 100
            assert ping is not None and await ping == "PONG"
            (usage,) = await reader.usage((k,))
            assert usage.concurrent == 1 and usage.tokens_minute == 3 * 7 + 100
        assert errors == []

    run_with(scenario())


def test_close_sends_and_waits_for_queued_settles(redis_url: str) -> None:
    async def scenario() -> None:
        limiter, reader = _limiter(redis_url), _limiter(redis_url)
        k = key(max_concurrent=10)
        async with running(reader):
            async with running(limiter):
                admissions = [await limiter.admit(k, 100, f"r{i}") for i in range(3)]
                for admission in admissions:
                    assert admission.reservation is not None
                    limiter.settle_soon(admission.reservation, 1)
            (usage,) = await reader.usage((k,))
            assert usage.concurrent == 0 and usage.tokens_minute == 3

    run_with(scenario())


def test_settle_soon_after_redis_lost_its_scripts(redis_url: str) -> None:
    async def scenario() -> None:
        errors: list[str] = []
        limiter = _limiter(redis_url, errors)
        async with running(limiter):
            k = key(max_concurrent=1)
            admission = await limiter.admit(k, 10, "r1")
            assert admission.reservation is not None
            with redis.Redis.from_url(redis_url) as probe:
                probe.script_flush()
            limiter.settle_soon(admission.reservation, 10)
            await asyncio.sleep(SETTLE_DELAY_S + 0.1)  # NOSCRIPT, loaded, sent again
            assert (await limiter.admit(k, 10, "r2")).allowed
        assert errors == []

    run_with(scenario())


def test_every_key_of_an_api_key_is_hash_tagged_into_one_slot(redis_url: str) -> None:
    async def scenario() -> None:
        clock = FakeClock(utc(2024, 2, 29, 12, 0, 0) + 0.5)
        limiter = _limiter(redis_url, clock=clock)
        async with running(limiter):
            k = key("team-a", rpm=5)
            admission = await limiter.admit(k, 7, "req-1")
            with redis.Redis.from_url(redis_url, decode_responses=True) as probe:
                names = sorted(probe.keys("*"))
                assert names == sorted(key_names("gw", "team-a"))
                assert all("{team-a}" in n for n in names)
                assert len({key_slot(n.encode()) for n in names}) == 1
                quota = probe.hgetall("gw:{team-a}:quota")
                assert quota == {"day:2024-02-29": "7", "month:2024-02": "7"}
                second = str(int(clock.now))
                assert probe.hgetall("gw:{team-a}:rpm") == {second: "1", "sum": "1"}
                assert probe.hgetall("gw:{team-a}:tpm") == {second: "7", "sum": "7"}
                assert probe.zrange("gw:{team-a}:seconds", 0, -1) == [second]
                (lease,) = probe.zrange("gw:{team-a}:leases", 0, -1)
                # Minted by the limiter (host:pid:instance:n); the request id is no part of it.
                assert admission.reservation is not None
                assert lease == admission.reservation.lease and "req-1" not in lease
                assert f":{os.getpid()}:" in lease
                # Expiries: window 61 s, quota a day beyond the month, lease ttl + 1 s.
                for window in ("rpm", "tpm", "seconds"):
                    assert 60 <= probe.ttl(f"gw:{{team-a}}:{window}") <= 61
                month_left = utc(2024, 3, 2) - clock.now
                assert abs(probe.ttl("gw:{team-a}:quota") - month_left) <= 2
                assert 15_000 <= probe.pttl("gw:{team-a}:leases") <= 16_000
            assert admission.reservation is not None
            await limiter.settle(admission.reservation, 3)
            with redis.Redis.from_url(redis_url, decode_responses=True) as probe:
                assert probe.zcard("gw:{team-a}:leases") == 0
                assert probe.hgetall("gw:{team-a}:quota") == {
                    "day:2024-02-29": "3",
                    "month:2024-02": "3",
                }
                assert probe.hgetall("gw:{team-a}:tpm") == {second: "3", "sum": "3"}

    run_with(scenario())


def test_old_quota_periods_are_pruned(redis_url: str) -> None:
    async def scenario() -> None:
        clock = FakeClock(utc(2025, 1, 30, 12))
        limiter = _limiter(redis_url, clock=clock)
        async with running(limiter):
            k = key()
            for _ in range(5):  # Jan 30, Jan 31, Feb 1, Feb 2, Feb 3
                admission = await limiter.admit(k, 1, "r")
                assert admission.reservation is not None
                await limiter.settle(admission.reservation, 1)
                clock.advance(86400)
            with redis.Redis.from_url(redis_url, decode_responses=True) as probe:
                fields = set(probe.hkeys("gw:{team-a}:quota"))
            assert fields == {"day:2025-02-02", "day:2025-02-03", "month:2025-02", "month:2025-01"}

    run_with(scenario())


def test_a_dead_process_frees_its_slots_when_its_leases_expire(redis_url: str) -> None:
    async def scenario() -> None:
        alive = _limiter(redis_url, lease_ttl=1.0)
        dying = _limiter(redis_url, lease_ttl=1.0)
        async with running(alive):
            await dying.start()
            k = key(max_concurrent=1)
            held = await dying.admit(k, 1, "held")
            assert held.allowed
            # Renewal keeps the lease past its TTL while its process lives.
            await asyncio.sleep(1.5)
            assert (await alive.admit(k, 1, "early")).denied == "max_concurrent"
            # The process dies: no more renewals, no settle.
            await dying.aclose()
            started = time.monotonic()
            while not (admission := await alive.admit(k, 1, "after")).allowed:
                assert time.monotonic() - started < 2.5, "the dead process's lease never expired"
                await asyncio.sleep(0.05)
            assert time.monotonic() - started <= 1.2
            assert admission.reservation is not None
            await alive.settle(admission.reservation, 1)

    run_with(scenario())


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_an_outage_is_counted_obeys_the_failure_mode_and_heals_by_itself(
    own_redis: RedisServer, mode: BackendFailure
) -> None:
    async def scenario() -> None:
        errors: list[str] = []
        limiter = _limiter(own_redis.url, errors, failure_mode=mode, failure_backoff=0.2)
        async with running(limiter):
            k = key(rpm=100, max_concurrent=5)
            before = await limiter.admit(k, 10, "before")
            assert before.allowed and before.reservation and not before.reservation.degraded
            assert await limiter.ready()

            own_redis.stop()
            # The first admit finds Redis gone; the next two are within the back-off.
            for attempt in range(3):
                started = time.monotonic()
                if mode == "open":
                    admission = await limiter.admit(k, 10, f"during-{attempt}")
                    assert admission.allowed
                    assert admission.reservation is not None
                    assert admission.reservation.degraded
                    assert admission.state == RateState()
                    await limiter.settle(admission.reservation, 10)  # a no-op
                else:
                    with pytest.raises(LimiterUnavailable):
                        await limiter.admit(k, 10, f"during-{attempt}")
                assert time.monotonic() - started < 0.6
            # The settle of a request admitted before the outage never raises, queued or
            # awaited; each is counted.
            limiter.settle_soon(before.reservation, 10)
            await limiter.settle(before.reservation, 10)
            assert errors == ["error"] * 5
            assert not await limiter.ready()
            # Past the back-off Redis is tried again, still down, still counted.
            await asyncio.sleep(0.25)
            if mode == "open":
                assert (await limiter.admit(k, 10, "still-down")).reservation.degraded  # type: ignore[union-attr]
            else:
                with pytest.raises(LimiterUnavailable):
                    await limiter.admit(k, 10, "still-down")
            assert len(errors) == 6

            own_redis.start()
            await asyncio.sleep(0.25)  # past the back-off
            after = await limiter.admit(k, 10, "after")
            assert after.allowed and after.reservation and not after.reservation.degraded
            assert after.state.limit_requests == 100
            assert await limiter.ready()
            await limiter.settle(after.reservation, 10)
            assert len(errors) == 6
            (usage,) = await limiter.usage((k,))
            # A fresh Redis (no persistence): only what came after the outage.
            assert usage.requests_minute == 1 and usage.concurrent == 0

    run_with(scenario())


def test_a_hung_redis_costs_one_short_timeout_then_nothing(unused_tcp_listener: int) -> None:
    async def scenario() -> None:
        errors: list[str] = []
        url = f"redis://127.0.0.1:{unused_tcp_listener}/0"
        limiter = _limiter(url, errors, socket_timeout=0.3, failure_backoff=5.0)
        async with running(limiter):
            started = time.monotonic()
            first = await limiter.admit(key(rpm=1), 1, "a")
            assert 0.25 <= time.monotonic() - started < 1.2  # one 0.3 s timeout
            # Within the back-off the admission awaits nothing at all: it is done at its first
            # step. (Timed instead, < 10 ms failed whenever a busy box preempted the process.)
            pending = limiter.admit(key(rpm=1), 1, "b")
            with pytest.raises(StopIteration) as done:
                pending.send(None)
            second = done.value.value
            assert first.reservation and first.reservation.degraded
            assert second.reservation and second.reservation.degraded
            assert len(errors) == 2

    run_with(scenario())


@pytest.fixture
def unused_tcp_listener() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def test_usage_raises_when_redis_is_away(own_redis: RedisServer) -> None:
    async def scenario() -> None:
        errors: list[str] = []
        limiter = _limiter(own_redis.url, errors)
        async with running(limiter):
            own_redis.stop()
            with pytest.raises(LimiterUnavailable):
                await limiter.usage((key(),))
            assert errors == ["error"]

    run_with(scenario())


def test_start_with_redis_down_still_serves_in_open_mode(own_redis: RedisServer) -> None:
    async def scenario() -> None:
        own_redis.stop()
        errors: list[str] = []
        limiter = _limiter(own_redis.url, errors, failure_backoff=0.0)
        async with running(limiter):
            admission = await limiter.admit(key(rpm=1), 1, "r")
            assert admission.allowed and admission.reservation and admission.reservation.degraded
            assert errors == ["error"]
            own_redis.start()
            assert (await limiter.admit(key(rpm=1), 1, "r2")).reservation.degraded is False  # type: ignore[union-attr]

    run_with(scenario())
