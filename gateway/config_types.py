"""What the gateway's configuration holds: its frozen dataclasses, their defaults and the
names of their choices (`gateway.config` reads the YAML file and the environment into them,
checks them, and re-exports every name here, so callers import from `gateway.config`)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from gateway.egress import EgressProxies

ProviderType = Literal["openai", "anthropic", "mock", "azure", "gemini"]
AzureAuth = Literal["api-key", "bearer"]
BackendFailure = Literal["open", "closed"]
Transport = Literal["native", "aiohttp", "httpx"]
Routing = Literal["weighted", "least_busy", "latency"]

DEMO_KEY = "sk-gateway-demo"
"""The key of the embedded default. It exists only when no config file is given."""


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    type: ProviderType
    base_url: str = ""
    api_key: str = field(default="", repr=False)
    max_retries: int = 2
    """Retries on connect errors, 429 and 5xx, only before the first byte reaches the client."""
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    # The mock provider's pace: a realistic model, no network.
    first_token_ms: float = 250.0
    token_ms: float = 25.0
    reply_tokens: int = 60
    apis: tuple[str, ...] = ("chat",)
    """The OpenAI APIs an `openai` provider serves (`chat`, `responses`): a Responses
    client's bytes pass through to one that serves `responses`, else are translated."""
    api_version: str = ""
    """`azure`: the `api-version` query of the deployments route, or `v1` for Azure's
    `/openai/v1/` route (model in the body, no api-version)."""
    auth: AzureAuth = "api-key"
    """`azure`: how `api_key` is sent: `api-key: KEY`, or `Authorization: Bearer KEY` (an
    Entra ID token; the gateway does not refresh it)."""


@dataclass(frozen=True)
class Limits:
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    daily_tokens: int | None = None
    monthly_tokens: int | None = None

    @property
    def any(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))


@dataclass(frozen=True)
class Timeouts:
    """Seconds. The gateway's (`timeouts:`), or a model's or deployment's own, whole: the
    config reads a model's `timeouts:` over the gateway's, a deployment's over its model's,
    once at load (`gateway.config`), so a request merges nothing."""

    connect: float = 5.0
    first_token: float = 60.0
    idle: float = 30.0
    total: float = 600.0
    """From the request's start, across its retries and fallbacks; the limit is the one of
    the deployment being tried (then streaming)."""
    keepalive: float = 15.0
    """Seconds of upstream silence after which an SSE comment keeps proxies open."""


@dataclass(frozen=True)
class DeploymentConfig:
    """One upstream that serves a model: a provider, its name for the model, a weight and
    the upstream account's own limits (only `rpm` and `tpm`)."""

    provider: str
    upstream_model: str
    weight: int = 1
    limits: Limits = field(default_factory=Limits)
    name: str = ""
    """The `deployment` label of metrics and logs; default `PROVIDER/UPSTREAM_MODEL`."""
    timeouts: Timeouts | None = None
    """Its attempts' timeouts, whole; None: its model's."""

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", f"{self.provider}/{self.upstream_model}")


@dataclass(frozen=True)
class ModelConfig:
    name: str
    provider: str = ""
    """The first deployment's provider (a model without `deployments` has just that one)."""
    upstream_model: str = ""
    fallbacks: tuple[str, ...] = ()
    deployments: tuple[DeploymentConfig, ...] = ()
    """Never empty once built: a model written with `provider` is one deployment."""
    routing: Routing = "weighted"
    timeouts: Timeouts | None = None
    """Its deployments' timeouts, whole (but a deployment's own); None: the gateway's."""
    deployments_derived: bool = field(default=False, init=False, compare=False, repr=False)
    """Its one deployment was made from `provider` (no `deployments` written): config errors
    about it name the model's `provider`, not `deployments[0]`."""

    def __post_init__(self) -> None:
        # Frozen: the derived fields are set once, here, so every reader sees both shapes.
        if not self.deployments and self.provider:
            one = DeploymentConfig(self.provider, self.upstream_model or self.name)
            object.__setattr__(self, "deployments", (one,))
            object.__setattr__(self, "deployments_derived", True)
        elif self.deployments and not self.provider:
            object.__setattr__(self, "provider", self.deployments[0].provider)
            object.__setattr__(self, "upstream_model", self.deployments[0].upstream_model)


NANOS_PER_USD = 1_000_000_000
"""Money inside the gateway is integer nano-dollars: Python and Redis's Lua doubles agree on
every sum below 2^53 nanos ($9 million)."""


@dataclass(frozen=True)
class Budget:
    """A key's spending limits in USD per UTC day and calendar month (README, "Spend")."""

    daily_usd: float | None = None
    monthly_usd: float | None = None

    @property
    def daily_nanos(self) -> int | None:
        return None if self.daily_usd is None else round(self.daily_usd * NANOS_PER_USD)

    @property
    def monthly_nanos(self) -> int | None:
        return None if self.monthly_usd is None else round(self.monthly_usd * NANOS_PER_USD)

    @classmethod
    def of(cls, value: Mapping[str, Any] | None) -> Budget | None:
        """The budget of a stored key's `budget` object (already checked by the admin API)."""
        if not value:
            return None
        daily, monthly = value.get("daily_usd"), value.get("monthly_usd")
        if daily is None and monthly is None:
            return None
        return cls(
            daily_usd=None if daily is None else float(daily),
            monthly_usd=None if monthly is None else float(monthly),
        )


@dataclass(frozen=True)
class ModelPrice:
    """USD per million tokens. cached_input / cache_write None: priced as input."""

    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None


@dataclass(frozen=True)
class KeyConfig:
    id: str
    key_sha256: str = field(repr=False)
    models: tuple[str, ...] | None = None
    """None: every configured model."""
    limits: Limits = field(default_factory=Limits)
    budget: Budget | None = None
    """Spending limits in USD; None: none (spend is still counted)."""

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


@dataclass(frozen=True)
class HealthConfig:
    """When a deployment is cooled down (per process: `gateway.routing.health`)."""

    failures: int = 3
    """Failed attempts within `window` seconds that cool a deployment down."""
    window: float = 30.0
    cooldown: float = 30.0
    """Seconds a cooled deployment gets no traffic; then one probe request."""


@dataclass(frozen=True)
class UpstreamPoolConfig:
    """Idle upstream connections kept for the next requests (`gateway.transports`)."""

    max_idle: int = 1024
    """Idle connections kept, at most, by one process (0: none, every request connects).
    A burst of concurrent streams opens one connection each; those kept spare the next
    burst a TCP (and TLS) handshake each. `aiohttp` keeps every idle connection."""
    idle_timeout: float = 30.0
    """Seconds an idle connection is kept; keep it below the provider's own idle timeout."""


@dataclass(frozen=True)
class LoggingConfig:
    file: str = ""
    """Empty: JSON lines on stdout."""
    queue_size: int = 10_000
    batch_size: int = 256
    sinks: tuple[str, ...] = ()
    """Where the request log goes: `stdout`, `file`, `database` (the ledger,
    `gateway.observability.ledger`). Empty: `file` when `file` is set, else `stdout`."""


@dataclass(frozen=True)
class TracingConfig:
    """OpenTelemetry traces (`gateway.observability.tracing`); off unless configured."""

    otlp_endpoint: str = ""
    """The collector's OTLP/HTTP base URL (`/v1/traces` is added unless a path is given);
    empty: tracing is off."""
    sample_ratio: float = 1.0
    """Share of new traces recorded; a client's `traceparent` decides for its own trace."""
    service_name: str = "llm-gateway"
    export_timeout: float = 2.0
    """Seconds one export may take, retries included, before its spans count as dropped."""
    max_queue_size: int = 2048
    """Spans waiting for export; past it new spans are dropped (and counted)."""


@dataclass(frozen=True)
class GatewayConfig:
    providers: tuple[ProviderConfig, ...]
    models: tuple[ModelConfig, ...]
    keys: tuple[KeyConfig, ...]
    redis_url: str = ""
    limits_backend_failure: BackendFailure = "open"
    concurrency_lease_ttl: float = 15.0
    """Seconds a concurrency slot outlives a process that stopped renewing it (Redis)."""
    timeouts: Timeouts = field(default_factory=Timeouts)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    log_bodies: bool = False
    max_body_bytes: int = 8 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    """Bound of a request's head (request line and header fields) as a client sends it; past
    it the answer is 431 and the connection closes (`gateway/server/protocol.py`)."""
    default_max_tokens: int = 4096
    """Tokens reserved for a request that names no max_tokens."""
    admin_key_sha256: str = field(default="", repr=False)
    """sha256 of the key that may read /admin/usage; empty: the admin route is off."""
    cors_origins: tuple[str, ...] = ()
    upstream_transport: Transport = "native"
    """What carries httpx's requests upstream (docs/performance.md)."""
    upstream_pool: UpstreamPoolConfig = field(default_factory=UpstreamPoolConfig)
    stream_buffer_bytes: int = 64 * 1024
    """High-water mark of bytes queued towards one client. Past it the relay stops reading
    the upstream until the client catches up (backpressure); a client that reads nothing
    for `timeouts.idle` seconds ends its stream with the outcome `slow_client`."""
    shutdown_grace: float = 30.0
    """Seconds open streams may run after SIGTERM before they get an error event."""
    max_requests_per_loop_turn: int = 48
    """At most this many requests start per event-loop turn, the rest wait in order, so a
    connection storm's setup comes in slices with the running streams' tokens relayed in
    between (`gateway/edge/budget.py`; docs/performance.md). 0: no limit."""
    egress: EgressProxies = field(default_factory=EgressProxies)
    """The egress proxies of the environment (`gateway.egress`); none by default."""
    pricing: Mapping[str, ModelPrice] = field(default_factory=dict)
    """Prices by model, upstream model or deployment name, over the default table
    (`gateway.pricing`)."""
    database_url: str = field(default="", repr=False)
    """Where keys managed at runtime live (`gateway.keys`): postgresql://... for any number
    of replicas, sqlite:///path for one node; empty: only the config's keys."""
    tracing: TracingConfig | None = None
    """OpenTelemetry traces (SPEC 13); None: off, and the SDK is never imported."""
    source: str = "<embedded default>"
    embedded_default: bool = False

    def provider(self, name: str) -> ProviderConfig:
        return next(p for p in self.providers if p.name == name)

    def model(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)

    def timeouts_of(self, model: ModelConfig, deployment: DeploymentConfig) -> Timeouts:
        """The timeouts of the attempts on one deployment of a model: the deployment's own,
        else the model's, else the gateway's (looked up once, by the router at start-up)."""
        return deployment.timeouts or model.timeouts or self.timeouts


def hash_key(secret: str) -> str:
    """The sha256 hex of a client key, as the config's `key_sha256` wants it."""
    return hashlib.sha256(secret.encode()).hexdigest()
