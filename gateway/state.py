"""The one object that holds everything a running gateway shares.

Built by `create_app()` (config, keys, models) and filled in by the app's lifespan (HTTP
client, providers, limiter, metrics, request log), closed on exit. Nothing here is
module-level: two apps in one process share nothing.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx
from starlette.types import Scope

from gateway.config import GatewayConfig, KeyConfig, ModelConfig
from gateway.edge.budget import StartBudget
from gateway.errors import InvalidApiKey
from gateway.limits.base import Limiter
from gateway.observability.finished import Finished
from gateway.observability.metrics import Metrics
from gateway.observability.requestlog import RequestLog
from gateway.providers.base import Provider
from gateway.relay.watch import StreamWatch

if TYPE_CHECKING:  # the store's database libraries load only when a database is configured
    from gateway.keys.store import KeyStore


def presented_secret(scope: Scope) -> bytes:
    """The key a request presents: `Authorization: Bearer KEY` or `x-api-key: KEY`,
    whichever comes first; b"" when there is none."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = bytes(value).partition(b" ")
            if scheme.lower() == b"bearer":
                return token.strip()
        elif name == b"x-api-key":
            return bytes(value).strip()
    return b""


@dataclass
class GatewayState:
    config: GatewayConfig
    metrics: Metrics
    models: dict[str, ModelConfig] = field(default_factory=dict)
    keys_by_hash: dict[str, KeyConfig] = field(default_factory=dict)
    providers: dict[str, Provider] = field(default_factory=dict)
    limiter: Limiter | None = None
    request_log: RequestLog | None = None
    transport: httpx.AsyncBaseTransport | None = None
    """The upstream HTTP transport all providers share."""
    watches: set[StreamWatch] = field(default_factory=set)
    """Every open request's watch: shutdown ends them, tests check none is left."""
    finished: Finished = field(init=False)
    """Finished requests' records on their way to the metrics and the request log."""
    start_budget: StartBudget | None = None
    """Paces request starts (`max_requests_per_loop_turn`); None when that is 0 (no limit)."""
    draining: bool = False
    """SIGTERM arrived: /readyz answers 503 and new requests are refused."""
    key_store: KeyStore | None = None
    """Keys managed at runtime (`database_url`), looked up after the config's."""

    def __post_init__(self) -> None:
        # Another worker's scrape cannot drain this one's queue: count each request soon.
        self.finished = Finished(self.metrics.record, linger=not self.metrics.multiprocess)
        per_turn = self.config.max_requests_per_loop_turn
        if per_turn > 0:
            self.start_budget = StartBudget(per_turn)
        self.models = {m.name: m for m in self.config.models}
        self.keys_by_hash = {k.key_sha256: k for k in self.config.keys}

    def authenticate(self, scope: Scope) -> KeyConfig:
        """The key of `Authorization: Bearer KEY` or `x-api-key: KEY`.

        The presented secret is hashed and looked up by its sha256; the lookup's timing
        depends only on the hash, which the caller already knows, and the final comparison
        is constant-time. The secret itself is never stored, logged or echoed.
        """
        secret = presented_secret(scope)
        if not secret:
            raise InvalidApiKey(
                "Missing API key: send it as 'Authorization: Bearer KEY' or 'x-api-key: KEY'."
            )
        digest = hashlib.sha256(secret).hexdigest()
        key = self.keys_by_hash.get(digest)
        if key is None and self.key_store is not None:
            # The store's table holds live secrets only (a rotated one until its grace ends).
            key = self.key_store.lookup(digest)
        elif key is not None and not hmac.compare_digest(digest, key.key_sha256):
            key = None
        if key is None:
            raise InvalidApiKey("Incorrect API key provided.")
        return key
