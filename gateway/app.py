"""`create_app(config)`: the ASGI application. Importing this module builds nothing.

The relayed routes are plain ASGI endpoints (no middleware on the token path); the small
routes use Starlette's Request/Response. Shared resources (HTTP transport, providers, limiter,
request log) are built in the lifespan and closed on exit, in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.config import GatewayConfig, resolve_config
from gateway.edge.completions import RelayEndpoint
from gateway.edge.http import request_id
from gateway.edge.routes import Routes
from gateway.errors import GatewayError, InvalidRequest
from gateway.limits import build_limiter
from gateway.observability.metrics import Metrics
from gateway.observability.requestlog import RequestLog
from gateway.providers import build_provider
from gateway.state import GatewayState
from gateway.transports import build_transport

log = structlog.get_logger("gateway")


def create_app(config: GatewayConfig) -> ASGIApp:
    state = GatewayState(
        config=config,
        metrics=Metrics(
            models=[m.name for m in config.models],
            providers=[p.name for p in config.providers],
            key_ids=[k.id for k in config.keys],
        ),
    )
    routes = Routes(state)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(state.metrics.close)  # last: after the request log has drained
            transport = build_transport(config)
            stack.push_async_callback(transport.aclose)
            state.transport = transport
            for p in config.providers:
                provider = build_provider(p, transport, config)
                stack.push_async_callback(provider.aclose)
                state.providers[p.name] = provider
            limiter = build_limiter(config, state.metrics.limiter_backend_error)
            await limiter.start()
            stack.push_async_callback(limiter.aclose)
            state.limiter = limiter
            request_log = RequestLog(config.logging, state.metrics, log_bodies=config.log_bodies)
            await request_log.start()
            stack.push_async_callback(request_log.aclose)
            state.request_log = request_log
            state.finished.handlers.append(request_log.submit)
            stack.push_async_callback(_end_open_requests, state)
            yield

    middleware = []
    if config.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(config.cors_origins),
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["authorization", "content-type", "x-api-key", "x-request-id"],
                expose_headers=["x-request-id", "retry-after", "x-ratelimit-remaining-requests"],
            )
        )
    relay = {
        "/v1/chat/completions": RelayEndpoint(state, "chat.completions"),
        "/v1/completions": RelayEndpoint(state, "completions"),
        "/v1/embeddings": RelayEndpoint(state, "embeddings"),
    }
    app = Starlette(
        routes=[
            *(Route(path, endpoint, methods=["POST"]) for path, endpoint in relay.items()),
            Route("/v1/models", routes.models, methods=["GET"]),
            Route("/v1/models/{name:path}", routes.model, methods=["GET"]),
            Route("/healthz", routes.healthz, methods=["GET"]),
            Route("/readyz", routes.readyz, methods=["GET"]),
            Route("/metrics", routes.metrics, methods=["GET"]),
            Route("/admin/usage", routes.admin_usage, methods=["GET"]),
            Route("/", routes.playground, methods=["GET"]),
        ],
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )
    app.state.gateway = state
    if config.cors_origins:
        # CORS answers must wrap the relayed routes too (which set their own request id).
        return RequestIds(app, skip=frozenset(relay))
    return GatewayApp(RequestIds(app), relay)


class GatewayApp:
    """The relayed routes straight to their endpoints, everything else to Starlette.

    Starlette's middleware stack wraps `send` in two closures per message; on a token stream
    that is every event. The relay endpoints answer their own errors (OpenAI-shaped, 500s
    included), so they need none of it.
    """

    def __init__(self, app: RequestIds, relay: dict[str, RelayEndpoint]) -> None:
        self.app = app
        self.state = app.state
        self._relay = relay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self._relay.get(scope["path"])
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
        self.state = app.state
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


async def _end_open_requests(state: GatewayState) -> None:
    """End what is still open, and hand every finished request's record over, before the
    request log and the limiter close (the limiter's `aclose` waits for the settles on their
    way)."""
    for watch in list(state.watches):
        watch.end("shutdown")
    for _ in range(100):  # the ended requests' tasks finish within a few loop turns
        if not state.watches:
            break
        await asyncio.sleep(0.01)
    state.finished.drain()


def app_from_env() -> ASGIApp:
    """The factory `gateway serve --workers N` gives uvicorn (each worker builds its own)."""
    return create_app(resolve_config(None))
