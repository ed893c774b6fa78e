"""Limits on a real Redis Cluster through the real server: two `gateway serve` replicas
with `redis_url: redis+cluster://...` keep every key's limit exact whichever master holds
it, across a master failover; a plain redis:// URL pointing at a Cluster node is refused
loudly (readiness 503, one log line naming the fix) instead of failing open in silence."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.crc import key_slot

from gateway.config import hash_key
from gateway.limits.redis_store import key_names
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway_proc import GatewayProcess, test_config
from tests.support.redis_cluster import RedisCluster

pytestmark = pytest.mark.redis

KEY_IDS = [f"cluster-{i}" for i in range(8)]


def _slot(key_id: str) -> int:
    return key_slot(key_names("gw", key_id)[0].encode())


def cluster_config(
    upstream: FakeUpstream, redis_url: str, key_ids: list[str] = KEY_IDS, **limits: int
) -> dict[str, Any]:
    config = test_config(upstream.url, redis_url=redis_url)
    config["keys"] = [
        {"id": key_id, "key_sha256": hash_key(f"sk-{key_id}"), "limits": limits}
        for key_id in key_ids
    ]
    return config


def chat(gateway: GatewayProcess, key_id: str) -> int:
    with httpx.Client(timeout=30) as client:
        return client.post(
            gateway.url + "/v1/chat/completions",
            headers={"authorization": f"Bearer sk-{key_id}"},
            json={"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]},
        ).status_code


@pytest.fixture(scope="module")
def replicas(
    upstream: FakeUpstream, redis_cluster: RedisCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[GatewayProcess]]:
    """Two gateways on the Cluster; every key rpm 1."""
    tmp = tmp_path_factory.mktemp("cluster")
    config = cluster_config(upstream, redis_cluster.url, rpm=1)
    procs = [GatewayProcess(config, tmp).start(), GatewayProcess(config, tmp).start()]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.stop()


def test_rpm_1_admits_exactly_one_per_key_on_every_master(
    replicas: list[GatewayProcess], redis_cluster: RedisCluster
) -> None:
    assert {redis_cluster.master_of(_slot(k)) for k in KEY_IDS} == set(
        redis_cluster.master_ports()
    ), "the keys must cover every master"
    for gateway in replicas:
        ready = httpx.get(gateway.url + "/readyz")
        assert ready.status_code == 200, ready.text
    with ThreadPoolExecutor(8) as pool:
        statuses = list(
            pool.map(lambda i: (KEY_IDS[i % 8], chat(replicas[i % 2], KEY_IDS[i % 8])), range(32))
        )
    admitted = {k: sum(1 for key_id, s in statuses if key_id == k and s == 200) for k in KEY_IDS}
    assert admitted == dict.fromkeys(KEY_IDS, 1), statuses
    assert sorted({s for _, s in statuses}) == [200, 429]


def test_a_master_failover_under_traffic_keeps_limits_exact(
    upstream: FakeUpstream, redis_cluster: RedisCluster, tmp_path: Path
) -> None:
    """Two replicas send requests on eight keys while a replica takes over its master
    (`CLUSTER FAILOVER`), under `limits_backend_failure: closed` so that nothing is admitted
    unchecked: a request is refused (503, counted as a backend error) only around the
    switch (a call the paused old master did not answer in time, then the 1 s back-off);
    afterwards every key is admitted again, and a key on the new master admits exactly
    its rpm."""
    key_ids = [f"failover-{i}" for i in range(8)]
    config = cluster_config(upstream, redis_cluster.url, key_ids)
    config["limits_backend_failure"] = "closed"
    victim = redis_cluster.master_of(_slot(key_ids[0]))
    # A key of the victim's slots: after the switch, the promoted replica holds it.
    new_key = next(k for k in (f"after-{i}" for i in range(1000)) if _on(redis_cluster, k, victim))
    config["keys"].append(
        {"id": new_key, "key_sha256": hash_key(f"sk-{new_key}"), "limits": {"rpm": 3}}
    )
    with GatewayProcess(config, tmp_path) as a, GatewayProcess(config, tmp_path) as b:
        stop = threading.Event()
        answers: list[tuple[float, int]] = []

        def traffic(gateway: GatewayProcess) -> None:
            while not stop.is_set():
                for key_id in key_ids:
                    answers.append((time.monotonic(), chat(gateway, key_id)))

        with ThreadPoolExecutor(2) as pool:
            running = [pool.submit(traffic, gw) for gw in (a, b)]
            time.sleep(0.3)
            switch_started = time.monotonic()
            redis_cluster.failover(redis_cluster.replica_of(victim))
            switch_ended = time.monotonic()
            time.sleep(3.0)  # past a timed-out call (0.5 s) and the back-off after it (1 s)
            stop.set()
            for future in running:
                future.result()
        assert redis_cluster.master_of(_slot(key_ids[0])) != victim
        refused = [t for t, status in answers if status == 503]
        assert {status for _, status in answers} <= {200, 503}
        for t in refused:
            assert switch_started - 0.1 <= t <= switch_ended + 2.0, t - switch_started
        assert [s for t, s in answers if t > switch_ended + 2.0] and all(
            s == 200 for t, s in answers if t > switch_ended + 2.0
        )
        errors = sum(backend_errors(gw) for gw in (a, b))
        assert errors >= len(refused)
        assert redis_cluster.master_of(_slot(new_key)) == redis_cluster.master_of(_slot(key_ids[0]))
        after = [chat(gw, new_key) for gw in (a, b, a, b, a)]
        assert sorted(after) == [200, 200, 200, 429, 429]


def _on(cluster: RedisCluster, key_id: str, master: int) -> bool:
    return cluster.master_of(_slot(key_id)) == master


def backend_errors(gateway: GatewayProcess) -> float:
    text = httpx.get(gateway.url + "/metrics").text
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("gateway_limiter_backend_errors_total ")
    )


def test_a_plain_url_to_a_cluster_node_is_not_ready_and_says_why(
    upstream: FakeUpstream, redis_cluster: RedisCluster, tmp_path: Path
) -> None:
    """Before: /readyz said ready (PING) and keys on the other masters were admitted past
    rpm 1 (MOVED counted as "backend down", then fail-open)."""
    node = redis_cluster.master_ports()[0]
    config = cluster_config(
        upstream, f"redis://127.0.0.1:{node}", [f"plain-{i}" for i in range(8)], rpm=1
    )
    config["limits_backend_failure"] = "closed"
    with GatewayProcess(config, tmp_path) as gateway:
        ready = httpx.get(gateway.url + "/readyz")
        assert ready.status_code == 503, ready.text
        statuses = [chat(gateway, f"plain-{i}") for i in range(8) for _ in range(2)]
        assert set(statuses) == {503}, statuses  # closed: nothing admitted unchecked
        lines = [
            line
            for line in gateway.output().splitlines()
            if "points at a Redis Cluster node" in line
        ]
        assert len(lines) == 1 and "redis+cluster://" in lines[0], gateway.output()[-2000:]
