"""Limits across the workers of one `gateway serve --workers 2` (the bench's 1 vs 2
workers comparison relies on it): with Redis they hold exactly; in memory each worker counts
its own, which is also the proof that the requests really reached both workers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.integration.test_limits_e2e import KEYS, chat, limits_config
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway_proc import GatewayProcess
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.redis


def admitted_of_30(gateway: GatewayProcess) -> int:
    """30 requests of the rpm-10 key, 10 at a time, each on a new connection (so the
    kernel hands them to whichever worker accepts first)."""
    key = KEYS["rpm"][0]
    with ThreadPoolExecutor(10) as pool:
        statuses = list(pool.map(lambda _: chat(gateway, key).status_code, range(30)))
    assert set(statuses) <= {200, 429}, statuses
    return statuses.count(200)


@pytest.mark.parametrize("backend", ["redis", "memory"])
def test_rpm_across_two_workers(backend: str, upstream: FakeUpstream, tmp_path: Path) -> None:
    with RedisServer() as redis:
        redis.start()
        config = limits_config(upstream, redis.url if backend == "redis" else "")
        env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")}
        (tmp_path / "prom").mkdir()
        with GatewayProcess(config, tmp_path, workers=2, env=env) as gateway:
            admitted = admitted_of_30(gateway)
    if backend == "redis":
        assert admitted == 10
    else:
        # Each worker admits its own 10: more than 10 means both workers took requests.
        assert 10 < admitted <= 20
