"""`Runtime`: everything a running gateway shares, built whole in the app's lifespan.

The lifespan (`gateway.app`) builds it in one piece (metrics, the upstream transport, the
providers, the limiter, the request log, the relay) and hands it to the server as Starlette
lifespan state, `{"gateway": runtime}`: every request finds it at `scope["state"]["gateway"]`,
`gateway serve`'s HTTP protocol at `app_state["gateway"]`, the server at
`server.lifespan.state["gateway"]`. Nothing here is module-level and nothing is filled in
later: two apps in one process share nothing, and a field is never None because it is not
built yet. Closing is the lifespan's (in reverse order of building), not this module's.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx

from gateway.config import GatewayConfig, ModelConfig
from gateway.edge.budget import StartBudget
from gateway.edge.keys import Keys
from gateway.limits.base import Limiter
from gateway.limits.upstream import UpstreamLimits
from gateway.observability.finished import Finished
from gateway.observability.metrics import Metrics
from gateway.observability.requestlog import RequestLog
from gateway.observability.trace_context import TraceStarter
from gateway.pricing import Prices
from gateway.providers.base import Provider
from gateway.relay.stream import Relay
from gateway.relay.watch import StreamWatch

if TYPE_CHECKING:  # the store's database libraries load only when a database is configured
    from gateway.keys.store import KeyStore
    from gateway.observability.ledger import Ledger


@dataclass(eq=False)
class Runtime:
    config: GatewayConfig
    metrics: Metrics
    transport: httpx.AsyncBaseTransport
    """The upstream HTTP transport all providers share."""
    providers: dict[str, Provider]
    limiter: Limiter
    upstream_limits: UpstreamLimits
    """The deployments' upstream account limits (rpm / tpm), counted in `limiter`'s backend."""
    request_log: RequestLog
    finished: Finished
    """Finished requests' records on their way to the metrics and the request log."""
    relay: Relay
    watches: set[StreamWatch]
    """Every open request's watch (the relay's): shutdown ends them, tests check none is
    left."""
    start_budget: StartBudget | None
    """Paces request starts (`max_requests_per_loop_turn`); None when that is 0 (no limit)."""
    key_store: KeyStore | None
    """Keys managed at runtime (`database_url`), looked up after the config's; None
    without a database."""
    prices: Prices
    """Every configured model's price (`gateway.pricing`)."""
    ledger: Ledger | None
    """The request ledger (`database_url`): written when `logging.sinks` names `database`,
    read by /admin/spend."""
    traces: TraceStarter | None
    """Starts each request's trace context (`tracing:`); None when tracing is off."""
    models: dict[str, ModelConfig] = field(init=False)
    keys: Keys = field(init=False)
    draining: bool = False
    """SIGTERM arrived: /readyz answers 503 and new requests are refused."""

    def __post_init__(self) -> None:
        self.models = {m.name: m for m in self.config.models}
        self.keys = Keys(self.config.keys, self.key_store)


def start_budget(
    config: GatewayConfig, loop: asyncio.AbstractEventLoop | None = None
) -> StartBudget | None:
    """The start budget `max_requests_per_loop_turn` asks for (on `loop` only, when given);
    None when it is 0."""
    per_turn = config.max_requests_per_loop_turn
    return StartBudget(per_turn, loop) if per_turn > 0 else None
