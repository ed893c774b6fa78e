"""The Redis backend on a real Redis Cluster (3 masters, 3 replicas): limits exact on every
master, MOVED and ASK followed, a master failover survived, and a plain redis:// URL that
points at a Cluster node refused loudly instead of failing open in silence."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from redis.crc import key_slot

from gateway.config import KeyConfig
from gateway.limits.base import Admission, LimiterUnavailable
from gateway.limits.cluster import ClusterClient, _first_key
from gateway.limits.redis_store import RedisLimiter, key_names
from gateway.limits.resp import RespClient, Script, pack, pack_items
from tests.limits.limits_support import key, run_with, running
from tests.support.redis_cluster import RedisCluster

pytestmark = pytest.mark.redis


def _limiter(url: str, errors: list[str], **options: object) -> RedisLimiter:
    return RedisLimiter(url, on_backend_error=lambda: errors.append("error"), **options)  # type: ignore[arg-type]


def _slot(key_id: str) -> int:
    return key_slot(key_names("gw", key_id)[0].encode())


def _keys_on_every_master(
    cluster: RedisCluster, prefix: str, n: int, **limits: int
) -> list[KeyConfig]:
    """`n` keys whose slots are spread over every master (asserted, not assumed)."""
    keys = [key(f"{prefix}-{i}", **limits) for i in range(n)]
    masters = {cluster.master_of(_slot(k.id)) for k in keys}
    assert masters == set(cluster.master_ports()), "the keys must cover every master"
    return keys


def _allowed(results: list[Admission]) -> int:
    return sum(
        r.allowed and r.reservation is not None and not r.reservation.degraded for r in results
    )


def test_rpm_1_holds_for_keys_on_every_master_across_two_limiters(
    redis_cluster: RedisCluster,
) -> None:
    async def scenario() -> None:
        errors: list[str] = []
        a, b = _limiter(redis_cluster.url, errors), _limiter(redis_cluster.url, errors)
        async with running(a, b):
            assert await a.ready() and await b.ready()
            keys = _keys_on_every_master(redis_cluster, "every", 8, rpm=1)
            for k in keys:
                results = await asyncio.gather(
                    *(lim.admit(k, 1, "r") for lim in (a, b, a, b, a, b))
                )
                assert _allowed(results) == 1, k.id
                assert {r.denied for r in results if not r.allowed} == {"rpm"}
            usages = await a.usage(tuple(keys))
            assert [u.requests_minute for u in usages] == [1] * 8
        assert errors == []

    run_with(scenario())


def test_ask_during_a_slot_migration_and_moved_after_it_keep_the_count(
    redis_cluster: RedisCluster,
) -> None:
    """A slot moves to another master while a key holds a lease: mid-migration its keys are
    on the importing node only and the old owner answers ASK; afterwards it answers MOVED.
    Either way the key's one count carries on: rpm 2 admits exactly twice."""

    async def scenario() -> None:
        errors: list[str] = []
        limiter = _limiter(redis_cluster.url, errors)
        async with running(limiter):
            k = key("migrating", rpm=2)
            slot = _slot(k.id)
            first = await limiter.admit(k, 1, "a")  # holds its lease: all five keys exist
            assert first.allowed
            source = redis_cluster.master_of(slot)
            target = next(p for p in redis_cluster.master_ports() if p != source)
            redis_cluster.migrate_slot_keys(slot, source, target)  # MIGRATING / IMPORTING
            with redis_cluster.client(target) as probe:
                assert probe.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 5
            second = await limiter.admit(k, 1, "b")  # source: ASK -> target
            assert second.allowed and second.reservation is not None
            assert not second.reservation.degraded
            # It ran on the importing node: the old owner still has none of the keys.
            with redis_cluster.client(source) as probe:
                assert probe.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
            redis_cluster.finish_slot_migration(slot, target)  # the slot is target's now
            assert redis_cluster.master_of(slot) == target
            with redis_cluster.client(target) as probe:
                assert probe.hget(key_names("gw", k.id)[0], "sum") == "2"
            third = await limiter.admit(k, 1, "c")  # its map says source: MOVED -> target
            assert not third.allowed and third.denied == "rpm"
            (usage,) = await limiter.usage((k,))
            assert usage.requests_minute == 2 and usage.concurrent == 2
        assert errors == []

    run_with(scenario())


def test_a_master_failover_during_traffic_keeps_the_limits_exact(
    redis_cluster: RedisCluster,
) -> None:
    """`CLUSTER FAILOVER` on a replica while two limiters admit on keys of its master: no
    admission is lost or doubled, nothing fails beyond the documented fail-open, and fresh
    keys on the new master admit exactly rpm."""

    async def scenario() -> None:
        errors: list[str] = []
        a, b = _limiter(redis_cluster.url, errors), _limiter(redis_cluster.url, errors)
        async with running(a, b):
            keys = _keys_on_every_master(redis_cluster, "failover", 8, rpm=10_000)
            victim = redis_cluster.master_of(_slot(keys[0].id))
            replica = redis_cluster.replica_of(victim)
            on_victim = [k for k in keys if redis_cluster.master_of(_slot(k.id)) == victim]
            admitted: dict[str, int] = {k.id: 0 for k in keys}
            degraded = 0
            stop = asyncio.Event()

            async def traffic(limiter: RedisLimiter) -> None:
                nonlocal degraded
                while not stop.is_set():
                    for k in keys:
                        result = await limiter.admit(k, 1, "r")
                        assert result.allowed and result.reservation is not None
                        if result.reservation.degraded:
                            degraded += 1
                        else:
                            admitted[k.id] += 1
                        limiter.settle_soon(result.reservation, 1)
                        # A skipped (backing-off) admit awaits nothing: let the rest run.
                        await asyncio.sleep(0.001 if result.reservation.degraded else 0)

            tasks = [asyncio.create_task(traffic(lim)) for lim in (a, b)]
            await asyncio.sleep(0.2)
            before = dict(admitted)
            await asyncio.to_thread(redis_cluster.failover, replica)
            assert redis_cluster.master_of(_slot(on_victim[0].id)) == replica
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.gather(*tasks)
            for k in on_victim:
                assert admitted[k.id] > before[k.id], "admissions stopped after the failover"
            # No admission lost or counted twice. A call that timed out while the old
            # master paused its clients for the switch is a documented fail-open (counted
            # as a backend error); had it run after all, it would be counted once, too.
            usages = await a.usage(tuple(keys))
            for u in usages:
                assert admitted[u.key_id] <= u.requests_minute <= admitted[u.key_id] + degraded
            assert degraded <= len(errors)

            fresh = [key(f"after-failover-{i}", rpm=1) for i in range(6)]
            for k in fresh:
                results = await asyncio.gather(*(lim.admit(k, 1, "r") for lim in (a, b, a)))
                assert _allowed(results) == 1

    run_with(scenario())


def test_a_killed_master_is_replaced_and_limits_hold_after_the_promotion(
    redis_cluster: RedisCluster,
) -> None:
    """A master dies under traffic: calls in flight on it and those made before its replica
    is promoted follow the documented fail-open (each one a counted backend error), keys
    on the other masters stay exact throughout, and once the replica is promoted its keys
    are admitted again, with rpm exact on fresh keys."""

    async def scenario() -> None:
        errors: list[str] = []
        a, b = _limiter(redis_cluster.url, errors), _limiter(redis_cluster.url, errors)
        async with running(a, b):
            keys = _keys_on_every_master(redis_cluster, "killed", 8, rpm=100_000)
            victim = redis_cluster.master_of(_slot(keys[0].id))
            on_victim = {k.id for k in keys if redis_cluster.master_of(_slot(k.id)) == victim}
            admitted = {k.id: 0 for k in keys}
            degraded = 0
            promoted = asyncio.Event()
            after_promotion = {k: 0 for k in on_victim}
            stop = asyncio.Event()

            async def traffic(limiter: RedisLimiter) -> None:
                nonlocal degraded
                while not stop.is_set():
                    for k in keys:
                        result = await limiter.admit(k, 1, "r")
                        assert result.allowed and result.reservation is not None
                        if result.reservation.degraded:
                            degraded += 1
                        else:
                            admitted[k.id] += 1
                            if promoted.is_set() and k.id in on_victim:
                                after_promotion[k.id] += 1
                        limiter.settle_soon(result.reservation, 1)
                        # A skipped (backing-off) admit awaits nothing: let the rest run.
                        await asyncio.sleep(0.001 if result.reservation.degraded else 0)

            tasks = [asyncio.create_task(traffic(lim)) for lim in (a, b)]
            try:
                await asyncio.sleep(0.2)
                new_master = await asyncio.to_thread(redis_cluster.kill, victim)
                promoted.set()
                deadline = asyncio.get_running_loop().time() + 10
                while min(after_promotion.values()) < 5:
                    assert asyncio.get_running_loop().time() < deadline, after_promotion
                    await asyncio.sleep(0.05)
            finally:
                stop.set()
                await asyncio.gather(*tasks)
            # Each fail-open admission is a counted backend error (so are settles and lease
            # renewals that found the master gone).
            assert 0 < degraded <= len(errors)
            usages = await a.usage(tuple(k for k in keys if k.id not in on_victim))
            assert {u.key_id: u.requests_minute for u in usages} == {
                k: n for k, n in admitted.items() if k not in on_victim
            }
            assert redis_cluster.master_of(_slot(keys[0].id)) == new_master
            fresh = [key(f"after-kill-{i}", rpm=1) for i in range(6)]
            for k in fresh:
                results = [await lim.admit(k, 1, "r") for lim in (a, b, a)]
                assert _allowed(results) == 1

    try:
        run_with(scenario())
    finally:
        for node in redis_cluster.nodes:
            if not node.running:
                redis_cluster.restart(node.port)  # it rejoins as a replica


def test_a_plain_url_to_a_cluster_node_is_refused_loudly(
    redis_cluster: RedisCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: readiness said yes (PING) and MOVED counted as "backend down", so keys of
    the other masters' slots were admitted unlimited. Now: not ready, one error naming the
    fix, and every admission follows limits_backend_failure (here: closed, so refused)."""

    async def scenario() -> None:
        errors: list[str] = []
        url = f"redis://127.0.0.1:{redis_cluster.master_ports()[0]}"
        limiter = _limiter(url, errors, failure_mode="closed")
        async with running(limiter):
            assert not await limiter.ready()
            keys = _keys_on_every_master(redis_cluster, "plain", 8, rpm=1)
            refused = 0
            for k in keys:
                for _ in range(2):
                    with pytest.raises(LimiterUnavailable):
                        await limiter.admit(k, 1, "r")
                    refused += 1
            assert refused == 16

    with caplog.at_level(logging.ERROR, logger="gateway.limits.redis_store"):
        run_with(scenario())
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 1 and "redis+cluster://" in lines[0], lines


def test_the_first_key_of_a_packed_script_call() -> None:
    script = Script(RespClient("redis://127.0.0.1:1"), "return 1")
    names = key_names("gw", "team-a")
    packed = script.head(names, (1, 2), 3) + pack_items(("x", "y", ""))
    assert _first_key(packed) == names[0].encode()
    assert _first_key(script.head((), (1,), 0)) is None  # no keys: any master
    assert _first_key(pack(["SCRIPT", "LOAD", "return 1"])) is None
    assert _first_key(pack(["EVAL", "return 1", 1, "k"])) is None


def test_steady_state_calls_go_over_the_masters_own_connections(
    redis_cluster: RedisCluster,
) -> None:
    """redis-py's Cluster client costs several times the RESP client per call: after a key's
    first call, its admissions and settles no longer go through it."""

    async def scenario() -> None:
        errors: list[str] = []
        limiter = _limiter(redis_cluster.url, errors)
        async with running(limiter):
            keys = _keys_on_every_master(redis_cluster, "steady", 8, rpm=1000)
            for k in keys:  # each key's first call goes through redis-py
                first = await limiter.admit(k, 1, "r")
                assert first.reservation is not None
                await limiter.settle(first.reservation, 1)
            client = limiter._client
            assert isinstance(client, ClusterClient)
            through_redis_py = 0
            execute = client._cluster.execute_command

            async def counting(*args: Any, **kwargs: Any) -> Any:
                nonlocal through_redis_py
                through_redis_py += 1
                return await execute(*args, **kwargs)

            client._cluster.execute_command = counting  # type: ignore[method-assign]
            results = await asyncio.gather(*(limiter.admit(k, 1, "r") for k in keys * 5))
            for r in results:
                assert r.reservation is not None and not r.reservation.degraded
                await limiter.settle(r.reservation, 1)
            assert through_redis_py == 0
        assert errors == []

    run_with(scenario())


def test_a_plain_url_to_a_cluster_node_is_found_out_by_moved_too(
    redis_cluster: RedisCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """The node denies INFO, so start-up cannot tell: the first call answered MOVED gives it
    away, and from then on no admission is checked against one node's slots only."""
    node = redis_cluster.master_ports()[0]
    keys = _keys_on_every_master(redis_cluster, "moved", 8, rpm=1)
    elsewhere = next(k for k in keys if redis_cluster.master_of(_slot(k.id)) != node)
    here = next(k for k in keys if redis_cluster.master_of(_slot(k.id)) == node)

    async def scenario() -> None:
        limiter = _limiter(f"redis://127.0.0.1:{node}", [], failure_mode="closed")
        async with running(limiter):
            assert (await limiter.admit(here, 1, "r")).allowed  # its own slot: no sign yet
            with pytest.raises(LimiterUnavailable):
                await limiter.admit(elsewhere, 1, "r")  # MOVED
            assert not await limiter.ready()
            with pytest.raises(LimiterUnavailable):
                await limiter.admit(here, 1, "r")  # its slots too: no half-enforcement

    with redis_cluster.client(node) as admin:
        admin.execute_command("ACL", "SETUSER", "default", "-info")
        try:
            with caplog.at_level(logging.ERROR, logger="gateway.limits.redis_store"):
                run_with(scenario())
        finally:
            admin.execute_command("ACL", "SETUSER", "default", "+@all")
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 1 and "it answered MOVED" in lines[0], lines


def test_settles_ending_together_are_batched_per_slot(redis_cluster: RedisCluster) -> None:
    """Settles of keys on every master, ending together: one script call per slot (a call
    naming keys of two slots would be refused CROSSSLOT), each settled to its own usage, and
    an admission leaving meanwhile sends the waiting ones ahead instead of carrying them."""

    async def scenario() -> None:
        errors: list[str] = []
        limiter, reader = _limiter(redis_cluster.url, errors), _limiter(redis_cluster.url, [])
        async with running(limiter, reader):
            keys = _keys_on_every_master(redis_cluster, "batched", 6, max_concurrent=20)
            for k in keys:  # each key's first call goes through redis-py
                first = await limiter.admit(k, 1, "r")
                assert first.reservation is not None
                await limiter.settle(first.reservation, 1)
            results = await asyncio.gather(*(limiter.admit(k, 10, "r") for k in keys * 4))
            for i, r in enumerate(results):
                assert r.reservation is not None and not r.reservation.degraded
                limiter.settle_soon(r.reservation, i)
            await limiter.admit(keys[0], 5, "meanwhile")
            await asyncio.sleep(0.2)
            usage = await reader.usage(tuple(keys))
            assert [u.concurrent for u in usage] == [1] + [0] * 5
            expected = [1 + sum(range(n, 24, 6)) for n in range(6)]
            expected[0] += 5
            assert [u.tokens_minute for u in usage] == expected
        assert errors == []

    run_with(scenario())
