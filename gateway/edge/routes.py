"""The small routes: models, health, readiness, metrics, admin usage and spend, the
playground.

Each reads the runtime from its request's lifespan state (`runtime_of`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import os
import secrets
import time
from importlib import resources

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from gateway.asgi import presented_secret
from gateway.config import DEMO_KEY
from gateway.edge.shared import runtime_of
from gateway.errors import GatewayError, InvalidApiKey, InvalidRequest, ServiceUnavailable
from gateway.limits.report import usage_rows
from gateway.observability.spend import LedgerUnavailable, spend_query


def _error(exc: GatewayError) -> Response:
    return Response(exc.json(), status_code=exc.status, media_type="application/json")


def admin_denied(request: Request) -> Response | None:
    """The answer to a request without the admin key (None: it has it)."""
    expected = runtime_of(request.scope).config.admin_key_sha256
    secret = presented_secret(request.scope)
    digest = hashlib.sha256(secret).hexdigest()
    if not expected:
        return _error(
            InvalidRequest(
                "the admin route is off: set admin_key_sha256 in the config",
                status=404,
                code="not_found",
            )
        )
    if not secret or not hmac.compare_digest(digest, expected):
        return _error(InvalidApiKey("The admin route needs the admin key."))
    return None


class Routes:
    def __init__(self) -> None:
        self._created = int(time.time())

    async def models(self, request: Request) -> Response:
        try:
            key = runtime_of(request.scope).keys.authenticate(request.scope)
        except GatewayError as exc:
            return _error(exc)
        data = [
            {"id": m.name, "object": "model", "created": self._created, "owned_by": m.provider}
            for m in runtime_of(request.scope).config.models
            if key.may_use(m.name)
        ]
        return JSONResponse({"object": "list", "data": data})

    async def model(self, request: Request) -> Response:
        runtime = runtime_of(request.scope)
        try:
            key = runtime.keys.authenticate(request.scope)
        except GatewayError as exc:
            return _error(exc)
        name = request.path_params["name"]
        model = runtime.models.get(name)
        if model is None or not key.may_use(name):
            err = InvalidRequest(
                f"The model '{name[:200]}' does not exist or you do not have access to it.",
                status=404,
                code="model_not_found",
                param="model",
            )
            return _error(err)
        return JSONResponse(
            {
                "id": model.name,
                "object": "model",
                "created": self._created,
                "owned_by": model.provider,
            }
        )

    async def healthz(self, request: Request) -> Response:
        # Open requests and event-loop tasks: what a soak run watches for leaks.
        st = runtime_of(request.scope)
        return JSONResponse(
            {
                "status": "ok",
                "pid": os.getpid(),
                "open_requests": len(st.watches),
                "tasks": len(asyncio.all_tasks()),
            }
        )

    async def readyz(self, request: Request) -> Response:
        st = runtime_of(request.scope)
        if st.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        if not await st.limiter.ready():
            return JSONResponse({"status": "limits backend unreachable"}, status_code=503)
        store = st.keys.store
        if store is not None and not store.reachable:
            # Still ready: the keys known are served; the detail says they may be stale.
            detail = f"key database unreachable since {store.unreachable_since or 0:.0f}"
            return JSONResponse({"status": "ready", "key_store": detail})
        return JSONResponse({"status": "ready"})

    async def metrics(self, request: Request) -> Response:
        st = runtime_of(request.scope)
        st.finished.drain()  # every request that ended before the scrape counts
        body, content_type = st.metrics.render()
        return Response(body, media_type=content_type)

    async def admin_usage(self, request: Request) -> Response:
        denied = admin_denied(request)
        if denied is not None:
            return denied
        st = runtime_of(request.scope)
        store = st.keys.store
        usages = await st.limiter.usage(st.config.keys + (store.keys() if store else ()))
        return JSONResponse({"object": "list", "data": usage_rows(usages)})

    async def admin_spend(self, request: Request) -> Response:
        """GET /admin/spend?key_id=&from=&to=&group_by=day|model: from the ledger."""
        denied = admin_denied(request)
        if denied is not None:
            return denied
        ledger = runtime_of(request.scope).ledger
        if ledger is None:
            return _error(
                InvalidRequest(
                    "spend is read from the request ledger: set database_url and "
                    "logging.sinks: [stdout, database]",
                    status=404,
                    code="not_found",
                )
            )
        try:
            query = spend_query(request.query_params)
        except InvalidRequest as exc:
            return _error(exc)
        try:
            rows = await ledger.spend(**query)
        except LedgerUnavailable:
            return _error(ServiceUnavailable("the ledger's database is unreachable; retry"))
        return JSONResponse({"object": "list", "group_by": query["group_by"], "data": rows})

    async def playground(self, request: Request) -> Response:
        """The playground page, with the demo key filled in only on the embedded default.

        Its inline CSS and JS run under a per-response nonce; the CSP also keeps the page
        from loading or sending anything anywhere but this gateway.
        """
        page = resources.files("gateway.playground").joinpath("index.html").read_text("utf-8")
        nonce = secrets.token_urlsafe(16)
        demo_key = DEMO_KEY if runtime_of(request.scope).config.embedded_default else ""
        page = page.replace("__CSP_NONCE__", nonce).replace("__DEMO_KEY__", html.escape(demo_key))
        csp = (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'"
        )
        headers = {
            "content-security-policy": csp,
            "cache-control": "no-store",
            "x-content-type-options": "nosniff",
            "referrer-policy": "no-referrer",
        }
        return HTMLResponse(page, headers=headers)
