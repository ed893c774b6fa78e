"""What the edge's routes use of the running gateway, and where a request finds it.

The runtime (`gateway.runtime.Runtime`) is built above the edge, in the app's lifespan, and
reaches each request as Starlette lifespan state (`scope["state"]`). The edge does not
import it: `EdgeRuntime` names the part it reads, which the runtime has (mypy checks that
where the lifespan hands it over).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from starlette.types import Scope

from gateway.asgi import STATE_KEY
from gateway.config import GatewayConfig, ModelConfig
from gateway.edge.budget import StartBudget
from gateway.edge.keys import Keys
from gateway.limits.base import Limiter
from gateway.observability.finished import Finished
from gateway.observability.metrics import Metrics
from gateway.observability.trace_context import TraceStarter
from gateway.pricing import Prices
from gateway.relay.stream import Relay
from gateway.relay.watch import StreamWatch

if TYPE_CHECKING:  # SQLAlchemy loads only when a database is configured
    from gateway.observability.ledger import Ledger


class EdgeRuntime(Protocol):
    config: GatewayConfig
    metrics: Metrics
    limiter: Limiter
    finished: Finished
    relay: Relay
    keys: Keys
    models: dict[str, ModelConfig]
    watches: set[StreamWatch]
    start_budget: StartBudget | None
    draining: bool
    prices: Prices
    ledger: Ledger | None
    traces: TraceStarter | None


def runtime_of(scope: Scope) -> EdgeRuntime:
    """The runtime a request's scope carries (one dict lookup)."""
    runtime: EdgeRuntime = scope["state"][STATE_KEY]
    return runtime
