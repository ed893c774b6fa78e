"""Retries and fallbacks, only before the first byte reaches the client.

A request is tried on its model's provider, then on each of the model's `fallbacks` in
order. Retryable failures (connection errors, timeouts, 5xx, a stream that ended before its
first event) are retried on the same provider `max_retries` times with a short back-off;
the provider rejecting the gateway's credentials or rate limiting it moves on to the next
fallback at once; a 4xx the client caused (a bad parameter) is the client's answer
everywhere, so it is returned at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from gateway.config import ModelConfig
from gateway.errors import GatewayError, UpstreamError, UpstreamRejected
from gateway.observability.metrics import Metrics
from gateway.observability.records import RequestRecord
from gateway.providers.base import Provider, UpstreamCall
from gateway.relay.traced import traced

T = TypeVar("T")

Attempt = Callable[[Provider, UpstreamCall], Awaitable[T]]


def _backoff(attempt: int) -> float:
    return min(0.05 * 4.0**attempt, 1.0)


async def with_fallbacks(
    models: list[ModelConfig],
    providers: Mapping[str, Provider],
    make_call: Callable[[ModelConfig], UpstreamCall],
    attempt: Attempt[T],
    record: RequestRecord,
    metrics: Metrics,
) -> T:
    if record.trace is not None:  # traced: each attempt is timed, a child span (traced.py)
        attempt = traced(attempt, record.trace)
    last: GatewayError | None = None
    attempts = 0
    for model in models:
        provider = providers[model.provider]
        call = make_call(model)
        for retry in range(provider.config.max_retries + 1):
            attempts += 1
            record.attempts = attempts
            record.provider, record.answered_by = model.provider, model.name
            try:
                return await attempt(provider, call)
            except UpstreamRejected as exc:
                metrics.upstream_error(model.provider, f"http_{exc.status}")
                if exc.status != 429:
                    raise
                last = exc
                break
            except UpstreamError as exc:
                metrics.upstream_error(model.provider, exc.kind)
                last = exc
                if not exc.retryable or retry == provider.config.max_retries:
                    break
            await asyncio.sleep(_backoff(retry))
    assert last is not None
    raise last
