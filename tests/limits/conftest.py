"""Fixtures for the limits tests: a real Redis per session, and both backends.

`limiter_factory` is parametrized over `memory` and `redis`, so every behavioural test
runs against both and proves they agree. Tests are plain functions driving their
scenario with `asyncio.run` (see `limits_support.run_with`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from gateway.limits.base import Limiter
from gateway.limits.memory import MemoryLimiter
from gateway.limits.redis_store import RedisLimiter
from tests.limits.limits_support import LimiterFactory
from tests.support.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own, free to be paused, killed and restarted."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's Redis, emptied for this test."""
    redis_server.start()  # in case an earlier test left it stopped
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
def backend_errors() -> list[str]:
    """One entry per `on_backend_error()` call."""
    return []


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def limiter_factory(request: pytest.FixtureRequest, backend_errors: list[str]) -> LimiterFactory:
    """Builds an unstarted limiter of the parametrized backend; `clock` (unix time) drives
    the window and period arithmetic of either."""
    if request.param == "memory":

        def memory(clock: Callable[[], float] | None = None, **_: Any) -> Limiter:
            return MemoryLimiter() if clock is None else MemoryLimiter(clock=clock)

        return memory

    url: str = request.getfixturevalue("redis_url")

    def shared(clock: Callable[[], float] | None = None, **options: Any) -> Limiter:
        return RedisLimiter(
            url,
            on_backend_error=lambda: backend_errors.append("error"),
            clock=clock,
            **options,
        )

    return shared
