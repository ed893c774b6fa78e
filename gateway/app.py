"""`create_app(config)`: the ASGI application. Importing this module builds nothing, and
neither does `create_app`: the shared resources (metrics, HTTP transport, providers,
limiter, request log) are built in the lifespan as one `Runtime`, handed to the server as
Starlette lifespan state, and closed on exit in reverse order.

The relayed routes are plain ASGI endpoints (no middleware on the token path); the small
routes use Starlette's Request/Response.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.asgi import STATE_KEY
from gateway.config import GatewayConfig, resolve_config
from gateway.edge.apis import CountTokens, parse_messages, parse_responses, send_messages_error
from gateway.edge.completions import RelayEndpoint
from gateway.edge.http import request_id
from gateway.edge.routes import Routes
from gateway.edge.shared import EdgeRuntime
from gateway.errors import GatewayError, InvalidRequest
from gateway.keys.admin import KeysAdmin
from gateway.limits import build_limiter
from gateway.limits.upstream import UpstreamLimits
from gateway.observability.finished import Finished
from gateway.observability.metrics import Metrics
from gateway.observability.requestlog import RequestLog
from gateway.observability.trace_context import TraceStarter
from gateway.pricing import Prices
from gateway.providers import build_provider
from gateway.providers.base import Provider
from gateway.relay.stream import Relay
from gateway.relay.watch import StreamWatch
from gateway.routing import Router
from gateway.runtime import Runtime, start_budget
from gateway.transports import build_transport

if TYPE_CHECKING:  # the store's database libraries load only when a database is configured
    from gateway.keys.store import KeyStore
    from gateway.observability.ledger import Ledger

log = structlog.get_logger("gateway")

Lifespan = Callable[[Starlette], contextlib.AbstractAsyncContextManager[dict[str, object]]]


def create_app(config: GatewayConfig) -> ASGIApp:
    relay = {
        "/v1/chat/completions": RelayEndpoint("chat.completions"),
        "/v1/completions": RelayEndpoint("completions"),
        "/v1/embeddings": RelayEndpoint("embeddings"),
        "/v1/responses": RelayEndpoint("chat.completions", parse_responses, name="responses"),
        "/v1/messages": RelayEndpoint(
            "chat.completions",
            parse_messages,
            send_messages_error,
            name="messages",
            passed=(b"anthropic-version", b"anthropic-beta"),
        ),
    }
    app = Starlette(
        routes=_routes(config, relay),
        middleware=_middleware(config),
        lifespan=_lifespan(config),
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )
    if config.cors_origins:
        # CORS answers must wrap the relayed routes too (which set their own request id).
        return RequestIds(app, skip=frozenset(relay))
    return GatewayApp(RequestIds(app), relay)


def _lifespan(config: GatewayConfig) -> Lifespan:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, object]]:
        async with contextlib.AsyncExitStack() as stack:
            runtime = await _build_runtime(config, stack)
            edge_view: EdgeRuntime = runtime  # mypy: the edge finds what it reads
            yield {STATE_KEY: edge_view}

    return lifespan


async def _build_runtime(config: GatewayConfig, stack: contextlib.AsyncExitStack) -> Runtime:
    """Build everything the requests share, each part closed by `stack` in reverse order."""
    metrics = Metrics(
        models=[m.name for m in config.models],
        providers=[p.name for p in config.providers],
        key_ids=[k.id for k in config.keys],
    )
    stack.callback(metrics.close)  # last: after the request log has drained
    key_store = await _start_key_store(config, metrics, stack) if config.database_url else None
    transport = build_transport(config)
    stack.push_async_callback(transport.aclose)
    providers: dict[str, Provider] = {}
    for p in config.providers:
        provider = build_provider(p, transport, config)
        stack.push_async_callback(provider.aclose)
        providers[p.name] = provider
    limiter = build_limiter(config, metrics.limiter_backend_error)
    await limiter.start()
    stack.push_async_callback(limiter.aclose)
    # The same backend as the client limits: Redis makes a deployment's rpm hold across
    # replicas, and limits_backend_failure applies alike.
    upstream_limits = UpstreamLimits(limiter)
    stack.push_async_callback(upstream_limits.aclose)  # before the limiter closes
    prices = Prices(config.models, config.pricing)
    if prices.unpriced:
        log.warning(
            "models without a price cost 0; add them under `pricing:`",
            models=prices.unpriced,
        )
    ledger = await _start_ledger(config, metrics, stack) if config.database_url else None
    request_log = RequestLog(
        config.logging,
        metrics,
        log_bodies=config.log_bodies,
        ledger=ledger if "database" in config.logging.sinks else None,
    )
    await request_log.start()
    stack.push_async_callback(request_log.aclose)
    # Another worker's scrape cannot drain this one's queue: count each request soon.
    finished = Finished(metrics.record, metrics.count_spend, linger=not metrics.multiprocess)
    finished.handlers.append(request_log.submit)
    traces = await _start_tracing(config, metrics, finished, stack) if config.tracing else None
    watches: set[StreamWatch] = set()
    runtime = Runtime(
        config=config,
        metrics=metrics,
        transport=transport,
        providers=providers,
        limiter=limiter,
        upstream_limits=upstream_limits,
        request_log=request_log,
        finished=finished,
        relay=Relay(
            providers,
            metrics,
            config.timeouts,
            config.log_bodies,
            watches,
            Router(config, metrics, upstream_limits),
        ),
        watches=watches,
        # The runtime lives on this loop: the budget needs not ask for it per request.
        start_budget=start_budget(config, asyncio.get_running_loop()),
        key_store=key_store,
        prices=prices,
        ledger=ledger,
        traces=traces,
    )
    stack.push_async_callback(_end_open_requests, runtime)
    return runtime


def _middleware(config: GatewayConfig) -> list[Middleware]:
    if not config.cors_origins:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["authorization", "content-type", "x-api-key", "x-request-id"],
            expose_headers=["x-request-id", "retry-after", "x-ratelimit-remaining-requests"],
        )
    ]


def _routes(config: GatewayConfig, relay: dict[str, RelayEndpoint]) -> list[BaseRoute]:
    routes = Routes()
    return [
        *(Route(path, endpoint, methods=["POST"]) for path, endpoint in relay.items()),
        Route("/v1/messages/count_tokens", CountTokens(), methods=["POST"]),
        Route("/v1/models", routes.models, methods=["GET"]),
        Route("/v1/models/{name:path}", routes.model, methods=["GET"]),
        Route("/healthz", routes.healthz, methods=["GET"]),
        Route("/readyz", routes.readyz, methods=["GET"]),
        Route("/metrics", routes.metrics, methods=["GET"]),
        Route("/admin/usage", routes.admin_usage, methods=["GET"]),
        Route("/admin/spend", routes.admin_spend, methods=["GET"]),
        *KeysAdmin(config, _key_store_of).routes(),
        Route("/", routes.playground, methods=["GET"]),
    ]


def _key_store_of(scope: Scope) -> KeyStore | None:
    runtime: Runtime = scope["state"][STATE_KEY]
    return runtime.key_store


async def _start_key_store(
    config: GatewayConfig, metrics: Metrics, stack: contextlib.AsyncExitStack
) -> KeyStore:
    from gateway.keys.store import KeyStore  # its database libraries load only when needed

    store = KeyStore(
        config.database_url,
        on_key=metrics.register_key_id,
        on_reachable=metrics.set_key_store_reachable,
    )
    await store.start()
    metrics.set_key_store_reachable(True)
    stack.push_async_callback(store.aclose)
    return store


async def _start_tracing(
    config: GatewayConfig, metrics: Metrics, finished: Finished, stack: contextlib.AsyncExitStack
) -> TraceStarter:
    """Traces (`tracing:`): each finished record's spans to the OTLP exporter's queue. The
    OpenTelemetry SDK loads here, only when tracing is configured; each worker process
    builds its own (the lifespan runs after `--workers` started it)."""
    from gateway.observability.tracing import Tracing

    assert config.tracing is not None
    tracing = Tracing(config, metrics.trace_spans_dropped)
    stack.push_async_callback(tracing.aclose)  # after the last records were handed over
    finished.handlers.append(tracing.record)
    return TraceStarter(config.tracing.sample_ratio)


async def _start_ledger(
    config: GatewayConfig, metrics: Metrics, stack: contextlib.AsyncExitStack
) -> Ledger:
    """The request ledger: written when `logging.sinks` names `database`, read by
    /admin/spend whenever there is a database. Closed after the request log has drained
    into it."""
    from gateway.keys.store import build_engine  # SQLAlchemy only with a database
    from gateway.observability.ledger import Ledger

    ledger = Ledger(build_engine(config.database_url), metrics, max_lines=config.logging.queue_size)
    await ledger.start()
    stack.push_async_callback(ledger.aclose)
    return ledger


class GatewayApp:
    """The relayed routes straight to their endpoints, everything else to Starlette.

    Starlette's middleware stack wraps `send` in two closures per message; on a token stream
    that is every event. The relay endpoints answer their own errors (OpenAI-shaped, 500s
    included), so they need none of it.

    `post_routes` says which: `gateway serve`'s HTTP protocol reads it and calls the
    endpoint of a POST to one of those paths itself, without this app's `__call__` in
    between (`gateway.server.protocol`); other servers go through `__call__`, to the same
    endpoint.
    """

    __slots__ = ("app", "post_routes")

    def __init__(self, app: RequestIds, relay: dict[str, RelayEndpoint]) -> None:
        self.app = app
        self.post_routes = relay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self.post_routes.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await self.app(scope, receive, send)


class RequestIds:
    """Every answer the small routes give (models, health, metrics, the playground, 404s,
    405s, 500s) carries `x-request-id`: the client's when it is a safe token, else a new one,
    as the relayed routes do. Outside Starlette, so that its error middleware's 500s get it
    too; not on the relayed routes, which set it themselves (`skip`: their paths, when they
    run inside Starlette)."""

    def __init__(self, app: Starlette, skip: frozenset[str] = frozenset()) -> None:
        self.app = app
        self._skip = skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"] == "POST" and scope["path"] in self._skip):
            await self.app(scope, receive, send)
            return
        rid = request_id(scope)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), (_RID, rid)]}
            await send(message)

        await self.app(scope, receive, send_with_id)


_RID = b"x-request-id"


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    error = InvalidRequest(
        f"{request.method} {request.url.path[:200]}: {exc.detail}",
        status=status,
        code="not_found" if status == 404 else "method_not_allowed" if status == 405 else None,
    )
    return Response(error.json(), status_code=status, media_type="application/json")


async def _internal_error(request: Request, exc: Exception) -> Response:
    # The traceback goes to the gateway's log, never into the response.
    log.error("unhandled error", path=request.url.path, exc_info=exc)
    error = GatewayError("the gateway failed to handle this request; it was logged")
    return Response(error.json(), status_code=500, media_type="application/json")


async def _end_open_requests(runtime: Runtime) -> None:
    """End what is still open, and hand every finished request's record over, before the
    request log and the limiter close (the limiter's `aclose` waits for the settles on their
    way)."""
    for watch in list(runtime.watches):
        watch.end("shutdown")
    for _ in range(100):  # the ended requests' tasks finish within a few loop turns
        if not runtime.watches:
            break
        await asyncio.sleep(0.01)
    runtime.finished.drain()


def app_from_env() -> ASGIApp:
    """The factory `gateway serve --workers N` gives uvicorn (each worker builds its own)."""
    return create_app(resolve_config(None))
