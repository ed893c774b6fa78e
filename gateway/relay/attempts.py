"""Failover, retries and fallbacks, only before the first byte reaches the client.

A request walks its plan (`gateway.routing.Router.plan`): the deployment its model's
routing picked, the model's other healthy deployments, then each of the model's
`fallbacks`' deployments. A failed attempt (connection error, timeout, 5xx, 429, a stream
that ended before its first event, the provider refusing the gateway's credentials) moves
on to the next deployment, and counts against that deployment's health; a 4xx the client
caused (a bad parameter) is the client's answer everywhere, so it is returned at once.

`max_retries` (per provider) is kept for a model's only deployment: retryable failures are
retried on it with a short back-off, as before deployments existed. A model with several
deployments fails over instead: another deployment is a better retry than the same one,
and each is tried at most once per request.

A deployment whose upstream account limit has no room at once is skipped; when no
deployment of the plan had room, the first skipped one is waited for, briefly.

`record.deployment`, `record.provider` and `record.answered_by` name the attempt in flight
(one place per attempt, for traces too).

A model with one deployment, no `limits` and no fallbacks (`Router.single`; most models)
skips the plan and the limiter: its one deployment is started at once. Its health,
in-flight count, latency, retries and metrics are kept as on the general path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Generic, TypeVar

from gateway.config import ModelConfig
from gateway.errors import GatewayError, RateLimited, UpstreamError, UpstreamRejected
from gateway.observability.metrics import Metrics
from gateway.observability.records import RequestRecord
from gateway.providers.base import Provider, UpstreamCall
from gateway.relay.traced import traced
from gateway.relay.watch import StreamWatch
from gateway.routing import QUEUE_WAIT, Deployment, Lease, Router

T = TypeVar("T")

Attempt = Callable[[Provider, UpstreamCall, StreamWatch], Awaitable[T]]
"""One attempt on one provider; it gets the request's watch (a stream's first-token
timeout is the watch's timer)."""


def _backoff(attempt: int) -> float:
    return min(0.05 * 4.0**attempt, 1.0)


def _no_headers(_answer: object) -> Mapping[str, str] | None:
    return None


class Attempts(Generic[T]):
    """One request's attempts: what they share, and the last failure."""

    __slots__ = (
        "attempt",
        "attempts",
        "headers_of",
        "last",
        "make_call",
        "metrics",
        "providers",
        "record",
        "router",
        "tokens",
        "watch",
    )

    def __init__(
        self,
        router: Router,
        providers: Mapping[str, Provider],
        make_call: Callable[[ModelConfig], UpstreamCall],
        attempt: Attempt[T],
        record: RequestRecord,
        metrics: Metrics,
        tokens: int,
        watch: StreamWatch,
        headers_of: Callable[[T], Mapping[str, str] | None] = _no_headers,
    ) -> None:
        self.router = router
        self.providers = providers
        self.make_call = make_call
        self.attempt = attempt if record.trace is None else traced(attempt, record)
        """Traced: each attempt timed, a child span."""
        self.record = record
        self.metrics = metrics
        self.tokens = tokens
        """What the request reserved: asked of a deployment's upstream account limit."""
        self.watch = watch
        self.headers_of = headers_of
        """The upstream response headers of an answer, for the upstream limiter."""
        self.last: GatewayError | None = None
        self.attempts = 0

    def first_answer(self, models: list[ModelConfig]) -> Awaitable[tuple[T, Lease]]:
        """The first answer of the plan, and the lease of the deployment that gave it (the
        caller `finish`es it when the answer ends)."""
        router = self.router
        if len(models) == 1 and (only := router.single.get(models[0].name)) is not None:
            # The usual case: one deployment, no fallbacks, no upstream limits. Its plan is
            # itself and it needs no ticket: no plan generator, no limiter call, and its
            # attempts are awaited straight from the caller (`last`: its failure is raised).
            # (`last`: never None. No cast(): a function call on every request.)
            return self.on(only, router.start(only), last=True)  # type: ignore[return-value]
        return self._plan(models)

    async def _plan(self, models: list[ModelConfig]) -> tuple[T, Lease]:
        router, tokens = self.router, self.tokens
        skipped: list[Deployment] = []
        for deployment in router.plan(models):
            lease = await router.admit(deployment, tokens)
            if lease is None:
                skipped.append(deployment)
                continue
            answer = await self.on(deployment, lease)
            if answer is not None:
                return answer
        if skipped and self.last is None:
            # No deployment had room at once: queue briefly on the first one skipped.
            lease = await router.admit(skipped[0], tokens, QUEUE_WAIT)
            answer = None if lease is None else await self.on(skipped[0], lease)
            if answer is not None:
                return answer
            if self.last is None:
                raise RateLimited(
                    f"every deployment of the model {models[0].name!r} is at its upstream "
                    "account's rate limit; retry shortly",
                    headers={"retry-after": "1"},
                )
        assert self.last is not None
        raise self.last

    async def on(
        self, deployment: Deployment, lease: Lease, *, last: bool = False
    ) -> tuple[T, Lease] | None:
        """Try one deployment (and retry it when it is its model's only one): its answer and
        lease, or None after it failed; with `last` (nothing else to try) its failure is
        raised instead."""
        router, record = self.router, self.record
        provider = self.providers[deployment.provider]
        call = self.make_call(deployment.call_model)
        retries = provider.config.max_retries if deployment.only else 0
        retry = 0
        while True:
            self.attempts += 1
            record.attempts = self.attempts
            record.provider, record.answered_by = deployment.provider, deployment.model
            record.deployment = deployment.name
            try:
                result = await self.attempt(provider, call, self.watch)
            except UpstreamRejected as exc:
                self.metrics.upstream_error(deployment.provider, f"http_{exc.status}")
                if exc.status != 429:
                    router.refused(lease)
                    raise
                router.failed(lease, exc.upstream_headers, "rate_limited")
                self.last = exc
                if last:
                    raise
                return None
            except UpstreamError as exc:
                self.metrics.upstream_error(deployment.provider, exc.kind)
                router.failed(lease, exc.upstream_headers, "failed")
                self.last = exc
                if not exc.retryable or retry == retries:
                    if last:
                        raise
                    return None
            except BaseException:
                router.abandon(lease)
                raise
            else:
                # The answer's headers only where the router reads them (`observed`).
                headers = self.headers_of(result) if deployment.observed else None
                router.answered(lease, headers)
                return result, lease
            await asyncio.sleep(_backoff(retry))
            retry += 1
            again = await router.admit(deployment, self.tokens)
            if again is None:
                if last:
                    assert self.last is not None
                    raise self.last
                return None
            lease = again
