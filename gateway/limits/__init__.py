"""Per-key rate limits and token quotas: the `Limiter` seam and its two backends.

`build_limiter()` picks the backend from the config: Redis (`RedisLimiter`, shared by every
replica) when `redis_url` is set, else this process's memory (`MemoryLimiter`). Both follow
the semantics written down in `gateway.limits.base`. `headers` renders a `RateState` as
OpenAI's `x-ratelimit-*` headers; `report` renders usage for the admin route and the CLI.

Deliberately not here: choosing the tokens to reserve for a request (the edge estimates
them) and turning a denial into a 429 (the edge and `gateway.errors` do).
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.config import GatewayConfig
from gateway.limits.base import (
    Admission,
    KeyUsage,
    Limiter,
    LimiterUnavailable,
    LimitName,
    RateState,
    Reservation,
)
from gateway.limits.headers import rate_limit_headers, retry_after_header
from gateway.limits.memory import MemoryLimiter
from gateway.limits.redis_store import RedisLimiter
from gateway.limits.report import format_usage_table, usage_rows

__all__ = [
    "Admission",
    "KeyUsage",
    "LimitName",
    "Limiter",
    "LimiterUnavailable",
    "MemoryLimiter",
    "RateState",
    "RedisLimiter",
    "Reservation",
    "build_limiter",
    "format_usage_table",
    "rate_limit_headers",
    "retry_after_header",
    "usage_rows",
]


def build_limiter(config: GatewayConfig, on_backend_error: Callable[[], None]) -> Limiter:
    """Redis when `config.redis_url` is set, memory otherwise. Nothing connects until
    the limiter's `start()`; `on_backend_error` is called for each request (or lease
    renewal) that found Redis unreachable."""
    if config.redis_url:
        return RedisLimiter(
            config.redis_url,
            on_backend_error=on_backend_error,
            failure_mode=config.limits_backend_failure,
            lease_ttl=config.concurrency_lease_ttl,
        )
    return MemoryLimiter()
