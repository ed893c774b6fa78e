"""Which deployment of a model a request tries, and in what order the others follow.

A model has one or more deployments (`gateway.config.DeploymentConfig`). For each request
`Router.plan` yields the deployments to try, lazily (a fallback model's order is only worked
out when its turn comes):

1. a deployment whose cooldown ended and that no other request is probing (that request is
   its one probe), else the deployment the model's `routing` picks among the healthy ones:
   - `weighted`: smooth weighted round robin (nginx's): over any run of sum(weights)
     requests each healthy deployment gets exactly its share, in an interleaved order,
     with no randomness, so the shares hold from the first requests on and tests can
     check them tightly; each process runs its own, so replicas' shares add up;
   - `least_busy`: the fewest requests in flight in this process (ties: the one sent
     fewer requests so far);
   - `latency`: the lowest EWMA of time to first event (alpha 0.3); a deployment not
     measured yet is tried first;
2. the model's other healthy deployments, best first by the same measure;
3. when every deployment of the model is cooled: only the one whose cooldown ends first;
4. then each fallback model's deployments, the same way.

A deployment whose upstream account has nothing left (as it last reported in
`x-ratelimit-remaining-*`, or as the upstream limiter counted it: `gateway.limits.upstream`)
is put after the others; a deployment with `limits` is only tried with that limiter's
ticket (none: the next deployment; none anywhere: a brief wait on the first). Those
headers are only read where they are used: for a deployment with `limits`, or one with
other deployments of its model to be ranked against. Health
(`routing.health`), in-flight counts and latencies are this process's own: with several
workers or replicas each judges by what it sees.

Deliberately not here: sending anything. The relay (`relay/attempts.py`) walks the plan,
and reports each attempt back: `start`, then `answered`, `failed`, `refused` or `abandon`,
and `finish` when the answer ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from gateway.config import DeploymentConfig, GatewayConfig, Limits, ModelConfig
from gateway.errors import ServiceUnavailable
from gateway.limits.base import LimiterUnavailable
from gateway.limits.upstream import UpstreamLimits, UpstreamTicket
from gateway.observability.metrics import Metrics
from gateway.routing.health import Health, retry_after


class UpstreamLimiter(Protocol):
    """What the router uses of `gateway.limits.upstream.UpstreamLimits`."""

    async def acquire(
        self, deployment_key: str, limits: Limits, tokens: int, wait: float
    ) -> UpstreamTicket | None: ...

    def observe(self, deployment_key: str, headers: Mapping[str, str]) -> None: ...

    def remaining(self, deployment_key: str) -> float | None: ...

    def settle_soon(self, ticket: UpstreamTicket, tokens_used: int) -> None: ...


_EWMA_ALPHA = 0.3
QUEUE_WAIT = 1.0
"""Seconds a request may wait for an upstream account's limit when no deployment of its
plan had room at once."""


@dataclass(eq=False)
class Deployment:
    """One deployment's configuration and this process's view of it."""

    model: str
    """The configured model it serves."""
    config: DeploymentConfig
    call_model: ModelConfig
    """The model as the provider and the relay read it: this deployment's provider, upstream
    name and timeouts (never None here: the gateway's when neither it nor its model has
    its own, the same object)."""
    health: Health
    only: bool
    """Its model's only deployment: then it is retried on its provider's `max_retries`."""
    in_flight: int = 0
    sent: int = 0
    ewma_ttft: float | None = None
    current_weight: int = 0
    """Smooth weighted round robin's running weight."""
    key: str = field(init=False)
    """The upstream limiter's key for it."""
    limited: bool = field(init=False)
    """It has `limits`: each attempt takes an upstream limiter ticket."""
    observed: bool = field(init=False)
    """Its upstream's rate-limit headers are read: only its limiter ticket or a ranking
    against its model's other deployments uses them."""
    name: str = field(init=False)
    """The config's `name`: copied, not a property, as every attempt reads it."""
    provider: str = field(init=False)
    """The config's `provider`, copied alike."""

    def __post_init__(self) -> None:
        self.key = f"{self.model}/{self.config.name}"
        self.limited = self.config.limits.any
        self.observed = self.limited or not self.only
        self.name = self.config.name
        self.provider = self.config.provider


class Lease:
    """One attempt on one deployment, from its start to the end of its answer."""

    __slots__ = ("deployment", "ended", "started", "ticket")

    def __init__(self, deployment: Deployment, ticket: UpstreamTicket | None) -> None:
        self.deployment = deployment
        self.ticket = ticket
        self.started = time.perf_counter()
        self.ended = False


class Router:
    def __init__(
        self,
        config: GatewayConfig,
        metrics: Metrics,
        limits: UpstreamLimiter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.limits: UpstreamLimiter = limits if limits is not None else UpstreamLimits(None)
        self._clock = clock
        self._routing = {m.name: m.routing for m in config.models}
        self._by_model: dict[str, list[Deployment]] = {}
        for m in config.models:
            only = len(m.deployments) == 1
            self._by_model[m.name] = [
                Deployment(
                    model=m.name,
                    config=d,
                    call_model=replace(
                        m,
                        provider=d.provider,
                        upstream_model=d.upstream_model,
                        deployments=(d,),
                        timeouts=config.timeouts_of(m, d),
                    ),
                    health=Health(config.health),
                    only=only,
                )
                for d in m.deployments
            ]
            for d in self._by_model[m.name]:
                metrics.set_deployment_healthy(m.name, d.name, True)
        self.single = {
            name: ds[0] for name, ds in self._by_model.items() if len(ds) == 1 and not ds[0].limited
        }
        """The models with one deployment and no upstream account limits, by name: their
        plan is that deployment, whatever its health, and it needs no ticket (the relay's
        fast path, `relay/attempts.py`)."""

    def deployments(self, model: str) -> list[Deployment]:
        return self._by_model[model]

    # --- the order ---------------------------------------------------------------------------

    def plan(self, models: list[ModelConfig]) -> Iterator[Deployment]:
        """The deployments to try for a request: its model's, then each fallback's."""
        for model in models:
            yield from self._order(model.name)

    def _order(self, model: str) -> list[Deployment]:
        deployments = self._by_model[model]
        if len(deployments) == 1:
            return deployments  # healthy or not, it is the only one (the old behaviour)
        # `needs_probe`, not the `healthy` property: a call less per deployment and request.
        healthy = [d for d in deployments if not d.health.needs_probe]
        if len(healthy) < len(deployments):
            # Only a cooled deployment (one that needs a probe) can be ready for its probe.
            now = self._clock()
            probe = next((d for d in deployments if d.health.probe_ready(now)), None)
            if probe is not None:
                probe.health.probing = True
                return [probe, *self._rank(model, healthy)]
            if not healthy:
                # Every one cooled: the one whose cooldown ends first, not one being probed.
                idle = [d for d in deployments if not d.health.probing] or deployments
                return [min(idle, key=lambda d: d.health.cooled_until)]
        return self._rank(model, healthy)

    def _rank(self, model: str, healthy: list[Deployment]) -> list[Deployment]:
        if len(healthy) > 1:
            remaining = self.limits.remaining
            spent = [d for d in healthy if (r := remaining(d.key)) is not None and r <= 0]
            if spent and len(spent) < len(healthy):
                rest = [d for d in healthy if d not in spent]
                return [*self._rank(model, rest), *spent]
        routing = self._routing[model]
        if routing == "least_busy":
            return sorted(healthy, key=lambda d: (d.in_flight, d.sent))
        if routing == "latency":
            return sorted(healthy, key=lambda d: -1.0 if d.ewma_ttft is None else d.ewma_ttft)
        return _smooth_weighted(healthy)

    # --- one attempt -------------------------------------------------------------------------

    async def admit(self, d: Deployment, tokens: int, wait: float = 0.0) -> Lease | None:
        """Room under the deployment's upstream account limits: a lease to start the attempt
        with, or None (count it and try another deployment)."""
        ticket = None
        if d.limited:
            try:
                ticket = await self.limits.acquire(d.key, d.config.limits, tokens, wait)
            except LimiterUnavailable:
                d.health.probing = False
                raise ServiceUnavailable(
                    "upstream account limits cannot be checked right now (limits backend "
                    "unreachable); retry",
                    headers={"retry-after": "1"},
                ) from None
            except BaseException:
                d.health.probing = False  # a probe claimed for this request is released
                raise
            if ticket is None:
                self.metrics.deployment_attempt(d.model, d.name, "over_limit")
                d.health.probing = False
                return None
        return self.start(d, ticket)

    def start(self, d: Deployment, ticket: UpstreamTicket | None = None) -> Lease:
        d.in_flight += 1
        d.sent += 1
        return Lease(d, ticket)

    def answered(self, lease: Lease, headers: Mapping[str, str] | None) -> None:
        """The attempt got its first event (or its whole plain answer)."""
        d = lease.deployment
        ttft = time.perf_counter() - lease.started
        d.ewma_ttft = (
            ttft if d.ewma_ttft is None else d.ewma_ttft + _EWMA_ALPHA * (ttft - d.ewma_ttft)
        )
        health = d.health
        if (health.needs_probe or health.probing) and health.succeeded():
            self.metrics.set_deployment_healthy(d.model, d.name, True)
        self.metrics.deployment_attempt(d.model, d.name, "ok")
        if headers is not None and d.observed:
            self.limits.observe(d.key, headers)

    def failed(self, lease: Lease, headers: Mapping[str, str], outcome: str) -> None:
        """The attempt failed before its first event: counts against its health."""
        d = lease.deployment
        if d.health.failed(self._clock(), retry_after(headers)):
            self.metrics.set_deployment_healthy(d.model, d.name, False)
        self.metrics.deployment_attempt(d.model, d.name, outcome)
        if headers and d.observed:
            self.limits.observe(d.key, headers)
        self.finish(lease, 0)

    def refused(self, lease: Lease) -> None:
        """The upstream refused the request as the client's fault (a 4xx): not its health's
        business, and the client's answer."""
        lease.deployment.health.probing = False
        self.metrics.deployment_attempt(lease.deployment.model, lease.deployment.name, "refused")
        self.finish(lease, 0)

    def abandon(self, lease: Lease) -> None:
        """The request went away during the attempt (cancelled): no verdict on health."""
        lease.deployment.health.probing = False
        self.metrics.deployment_attempt(lease.deployment.model, lease.deployment.name, "cancelled")
        self.finish(lease, 0)

    def finish(self, lease: Lease, tokens_used: int) -> None:
        """The attempt's answer ended (or the attempt failed): out of flight, and the
        upstream account's reservation settled to what was used."""
        if lease.ended:
            return
        lease.ended = True
        lease.deployment.in_flight -= 1
        if lease.ticket is not None:
            self.limits.settle_soon(lease.ticket, tokens_used)


def _smooth_weighted(healthy: list[Deployment]) -> list[Deployment]:
    """nginx's smooth weighted round robin: the pick, then the others by weight."""
    total = 0
    best = healthy[0]
    for d in healthy:
        d.current_weight += d.config.weight
        total += d.config.weight
        if d.current_weight > best.current_weight:
            best = d
    best.current_weight -= total
    rest = [d for d in healthy if d is not best]
    if len(rest) > 1:  # (a model of two deployments, the usual case, has nothing to sort)
        rest.sort(key=lambda d: -d.config.weight)  # stable, as `sorted`
    return [best, *rest]
