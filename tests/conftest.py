"""Fixtures shared by the integration tests: a fake provider on a real socket and the real
`gateway serve` in front of it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway_proc import GatewayProcess, test_config
from tests.support.redis_cluster import RedisCluster


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(scope="session")
def gateway(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """One gateway for the tests that do not change its config."""
    tmp = tmp_path_factory.mktemp("gateway")
    with GatewayProcess(test_config(upstream.url), tmp) as proc:
        yield proc


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A real Redis Cluster (3 masters, 3 replicas), shared by the Cluster tests. Tests
    may fail over or migrate slots; none may assume which node serves what."""
    with RedisCluster() as cluster:
        yield cluster
