"""Helpers for the limits tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from gateway.config import KeyConfig, Limits
from gateway.limits.base import Limiter

T = TypeVar("T")

LimiterFactory = Callable[..., Limiter]
"""Builds an unstarted limiter of the backend under test (`clock=` drives its time)."""


def run_with(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@asynccontextmanager
async def running(*limiters: Limiter) -> AsyncIterator[None]:
    """Start the limiters, and close them however the test ends."""
    started: list[Limiter] = []
    try:
        for limiter in limiters:
            await limiter.start()
            started.append(limiter)
        yield
    finally:
        for limiter in reversed(started):
            await limiter.aclose()


def key(key_id: str = "team-a", **limits: int) -> KeyConfig:
    return KeyConfig(id=key_id, key_sha256="0" * 64, limits=Limits(**limits))


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    """Unix time of a UTC date and time: utc(2025, 1, 31, 23, 59, 50)."""
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


class FakeClock:
    """Unix time that moves only when told to."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
