"""Each upstream attempt of a traced request timed, and named upstream in `traceparent`.

Kept apart from the attempts loop (`attempts.Attempts` wraps its attempt with this only
when the request is traced), so the loop reads as it did and an untraced request pays one
`is None` check. The timings become child spans of the request's span once it is finished
(`gateway.observability.tracing`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from time import perf_counter
from typing import TypeVar

from gateway.errors import GatewayError, UpstreamError, UpstreamRejected
from gateway.observability.records import RequestRecord
from gateway.providers.base import Provider, UpstreamCall
from gateway.relay.watch import StreamWatch

T = TypeVar("T")

Attempt = Callable[[Provider, UpstreamCall, StreamWatch], Awaitable[T]]


def traced(attempt: Attempt[T], record: RequestRecord) -> Attempt[T]:
    """`attempt`, each call of it recorded in the record's trace (with the deployment the
    attempt loop named in `record.deployment`) and its span sent upstream."""
    trace = record.trace
    assert trace is not None

    async def run(provider: Provider, call: UpstreamCall, watch: StreamWatch) -> T:
        model = call.model
        timing = trace.begin_attempt(
            provider.config.name,
            model.name,
            model.upstream_model or model.name,
            deployment=record.deployment,
        )
        try:
            traceparent = trace.traceparent(timing.span_id)
            return await attempt(provider, replace(call, traceparent=traceparent), watch)
        except UpstreamRejected as exc:
            timing.error = f"http_{exc.status}"
            raise
        except UpstreamError as exc:
            timing.error = exc.kind
            raise
        except GatewayError as exc:
            timing.error = exc.outcome
            raise
        except asyncio.CancelledError:
            timing.error = "cancelled"
            raise
        finally:
            timing.end = perf_counter()

    return run
