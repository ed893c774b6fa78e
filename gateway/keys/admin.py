"""The admin API of keys managed at runtime: `/admin/keys*`, its OpenAPI document
and the playground's admin page (`GET /admin`).

Every route needs the admin key (`admin_key_sha256`); answers and errors are JSON in
OpenAI's shape. A secret is in exactly one answer, the one that created it (create,
rotate); no answer ever holds a secret's hash. The config file's keys are listed and shown
(`"source": "config"`) and answer 409 to any change: they change with the file.

Deliberately not here: the store and its database (`gateway.keys.store`), and the request
path's authentication (`edge/keys.py: Keys` asks the store's in-memory table).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
from collections.abc import Callable
from dataclasses import fields
from datetime import datetime
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from starlette.types import Scope

from gateway.asgi import presented_secret
from gateway.config import GatewayConfig, KeyConfig, Limits
from gateway.errors import GatewayError, InvalidApiKey, InvalidRequest, ServiceUnavailable
from gateway.keys.model import (
    UNSET,
    KeyConflict,
    KeyNotFound,
    ManagedKey,
    StoreUnavailable,
    limits_json,
)
from gateway.keys.openapi import openapi_document

if TYPE_CHECKING:  # the database libraries load only when a database is configured
    from gateway.keys.store import KeyStore

MAX_BODY = 64 * 1024
MAX_METADATA = 4 * 1024
MAX_GRACE = 30 * 86400.0
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_BUDGET_FIELDS = ("daily_usd", "monthly_usd")


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _error(exc: GatewayError) -> Response:
    return Response(
        exc.json(), status_code=exc.status, headers=exc.headers, media_type="application/json"
    )


def _not_found(key_id: str) -> GatewayError:
    return InvalidRequest(f"No key with id '{key_id[:64]}'.", status=404, code="key_not_found")


def _config_key_json(key: KeyConfig) -> dict[str, Any]:
    return {
        "object": "key",
        "id": key.id,
        "source": "config",
        "status": "active",
        "models": list(key.models) if key.models is not None else None,
        "limits": limits_json(key.limits),
        "budget": None,
        "expires_at": None,
        "blocked": False,
        "revoked_at": None,
        "metadata": {},
        "created_at": None,
        "updated_at": None,
        "previous_secret_valid_until": None,
    }


class KeysAdmin:
    """The `/admin/keys*` endpoints; `store_of(scope)` is the running app's store (None: no
    database, so only the config's keys, listed and shown)."""

    def __init__(self, config: GatewayConfig, store_of: Callable[[Scope], KeyStore | None]) -> None:
        self.config = config
        self.store_of = store_of
        self.config_keys = {k.id: k for k in config.keys}
        self.models = {m.name for m in config.models}

    def routes(self) -> list[Route]:
        return [
            Route("/admin/keys", self.dispatch, methods=["GET", "POST"]),
            Route("/admin/keys/{id}", self.dispatch, methods=["GET", "PATCH", "DELETE"]),
            Route("/admin/keys/{id}/rotate", self.rotate, methods=["POST"]),
            Route("/admin/openapi.json", self.openapi, methods=["GET"]),
            Route("/admin", self.page, methods=["GET"]),
        ]

    async def rotate(self, request: Request) -> Response:
        return await self.dispatch(request, rotate=True)

    async def dispatch(self, request: Request, rotate: bool = False) -> Response:
        try:
            store = self._authorize(request)
            key_id = request.path_params.get("id")
            method = request.method
            if key_id is None and method == "GET":
                return self._list(store)
            if key_id is not None and method == "GET":
                return self._show(store, key_id)
            if key_id is not None:
                self._refuse_config_key(key_id)
            if store is None:
                raise InvalidRequest(
                    "keys managed at runtime are off: set database_url (or DATABASE_URL)",
                    status=404,
                    code="not_found",
                )
            if key_id is None:
                return await self._create(store, await _body(request))
            if rotate:
                return await self._rotate(store, key_id, await _body(request))
            if method == "PATCH":
                return await self._update(store, key_id, await _body(request))
            return await self._revoke(store, key_id)
        except GatewayError as exc:
            return _error(exc)
        except StoreUnavailable:
            return _error(
                ServiceUnavailable(
                    "The key database is unreachable: nothing was changed; retry later.",
                    headers={"retry-after": "5"},
                )
            )

    async def openapi(self, request: Request) -> Response:
        return _json(openapi_document())

    async def page(self, request: Request) -> Response:
        """The playground's admin page: keys, their limits and usage, create, block, rotate,
        revoke. The page holds no data; it asks the API with the admin key typed into it.
        Inline CSS and JS under a per-response nonce, nothing loaded from anywhere else."""
        page = resources.files("gateway.playground").joinpath("admin.html").read_text("utf-8")
        nonce = secrets.token_urlsafe(16)
        csp = (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )
        headers = {
            "content-security-policy": csp,
            "cache-control": "no-store",
            "x-content-type-options": "nosniff",
            "referrer-policy": "no-referrer",
        }
        return HTMLResponse(page.replace("__CSP_NONCE__", nonce), headers=headers)

    # --- the routes --------------------------------------------------------------------------

    def _list(self, store: KeyStore | None) -> Response:
        data = [_config_key_json(k) for k in self.config.keys]
        data += [row.public() for row in store.rows()] if store is not None else []
        return _json({"object": "list", "data": data})

    def _show(self, store: KeyStore | None, key_id: str) -> Response:
        if key_id in self.config_keys:
            return _json(_config_key_json(self.config_keys[key_id]))
        row = store.row(key_id) if store is not None else None
        if row is None:
            raise _not_found(key_id)
        return _json(row.public())

    async def _create(self, store: KeyStore, body: dict[str, Any]) -> Response:
        _only(body, {"id", "models", "limits", "budget", "expires_at", "metadata"})
        key_id = body.get("id")
        if not isinstance(key_id, str) or not _ID.fullmatch(key_id):
            raise InvalidRequest(
                "'id' must be 1 to 64 letters, digits or . _ : - (starting with a letter or "
                "digit).",
                param="id",
            )
        if key_id in self.config_keys:
            raise _conflict(f"'{key_id}' is a key of the config file.")
        try:
            row, secret = await store.create(
                key_id,
                models=self._models(body.get("models")),
                limits=_limits(body.get("limits")),
                budget=_budget(body.get("budget")),
                expires_at=_time(body.get("expires_at"), "expires_at"),
                metadata=_metadata(body.get("metadata")),
            )
        except KeyConflict:
            raise _conflict(f"A key with id '{key_id}' exists or was revoked.") from None
        return _json({**row.public(), "key": secret}, status=201)

    async def _update(self, store: KeyStore, key_id: str, body: dict[str, Any]) -> Response:
        _only(body, {"models", "limits", "budget", "expires_at", "metadata", "blocked"})
        changes: dict[str, Any] = {name: UNSET for name in body}
        if "models" in body:
            changes["models"] = self._models(body["models"])
        if "limits" in body:
            changes["limits"] = _limits(body["limits"])
        if "budget" in body:
            changes["budget"] = _budget(body["budget"])
        if "expires_at" in body:
            changes["expires_at"] = _time(body["expires_at"], "expires_at")
        if "metadata" in body:
            changes["metadata"] = _metadata(body["metadata"])
        if "blocked" in body:
            if not isinstance(body["blocked"], bool):
                raise InvalidRequest("'blocked' must be true or false.", param="blocked")
            changes["blocked"] = body["blocked"]
        try:
            row = await store.update(key_id, **changes)
        except KeyNotFound:
            raise _not_found(key_id) from None
        return _json(row.public())

    async def _rotate(self, store: KeyStore, key_id: str, body: dict[str, Any]) -> Response:
        _only(body, {"grace_seconds"})
        grace = body.get("grace_seconds", 0)
        if (
            not isinstance(grace, int | float)
            or isinstance(grace, bool)
            or not 0 <= grace <= MAX_GRACE
        ):
            raise InvalidRequest(
                f"'grace_seconds' must be a number from 0 to {int(MAX_GRACE)}.",
                param="grace_seconds",
            )
        try:
            row, secret = await store.rotate(key_id, float(grace))
        except KeyNotFound:
            raise _not_found(key_id) from None
        except KeyConflict:
            raise _conflict(f"'{key_id}' was rotated by another request just now.") from None
        return _json({**row.public(), "key": secret})

    async def _revoke(self, store: KeyStore, key_id: str) -> Response:
        try:
            row: ManagedKey = await store.revoke(key_id)
        except KeyNotFound:
            raise _not_found(key_id) from None
        return _json(row.public())

    # --- checks --------------------------------------------------------------------------

    def _authorize(self, request: Request) -> KeyStore | None:
        expected = self.config.admin_key_sha256
        if not expected:
            raise InvalidRequest(
                "the admin routes are off: set admin_key_sha256 in the config",
                status=404,
                code="not_found",
            )
        secret = presented_secret(request.scope)
        digest = hashlib.sha256(secret).hexdigest()
        if not secret or not hmac.compare_digest(digest, expected):
            raise InvalidApiKey("The admin routes need the admin key.")
        return self.store_of(request.scope)

    def _refuse_config_key(self, key_id: str) -> None:
        if key_id in self.config_keys:
            raise _conflict(f"'{key_id}' is a key of the config file: change it there and restart.")

    def _models(self, value: Any) -> tuple[str, ...] | None:
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidRequest("'models' must be a list of model names or null.", param="models")
        unknown = [v for v in value if v not in self.models]
        if unknown:
            raise InvalidRequest(
                f"'models' names {unknown[0][:100]!r}, which is not a configured model.",
                param="models",
            )
        return tuple(dict.fromkeys(value))


def _conflict(message: str) -> GatewayError:
    return InvalidRequest(message, status=409, code="conflict")


async def _body(request: Request) -> dict[str, Any]:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise InvalidRequest(
                f"The body is larger than {MAX_BODY} bytes.", status=413, code="payload_too_large"
            )
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object.")
    return body


def _only(body: dict[str, Any], allowed: set[str]) -> None:
    for name in body:
        if name not in allowed:
            raise InvalidRequest(
                f"Unknown field '{str(name)[:64]}'; allowed: {', '.join(sorted(allowed))}.",
                param=str(name)[:64],
            )


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _limits(value: Any) -> Limits:
    if value is None:
        return Limits()
    names = [f.name for f in fields(Limits)]
    if not isinstance(value, dict):
        raise InvalidRequest("'limits' must be an object.", param="limits")
    for name, v in value.items():
        if name not in names:
            raise InvalidRequest(
                f"'limits' has an unknown field; allowed: {', '.join(names)}.", param="limits"
            )
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
            raise InvalidRequest(
                f"'limits.{name}' must be a whole number above 0, or null.", param="limits"
            )
    return Limits(**value)


def _budget(value: Any) -> dict[str, float] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(k in _BUDGET_FIELDS for k in value):
        raise InvalidRequest(
            f"'budget' must be an object with {' and/or '.join(_BUDGET_FIELDS)}.", param="budget"
        )
    out: dict[str, float] = {}
    for name, v in value.items():
        if v is None:
            continue
        if not _number(v) or v < 0:
            raise InvalidRequest(f"'budget.{name}' must be a number of dollars, 0 or more.")
        out[name] = float(v)
    return out


def _time(value: Any, param: str) -> float | None:
    """Unix seconds or an ISO 8601 date-time with its offset."""
    if value is None:
        return None
    if _number(value) and value > 0:
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed.timestamp()
    raise InvalidRequest(
        f"'{param}' must be unix seconds or an ISO 8601 time with an offset "
        "(2026-01-31T00:00:00Z), or null.",
        param=param,
    )


def _metadata(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(orjson.dumps(value)) > MAX_METADATA:
        raise InvalidRequest(
            f"'metadata' must be an object of at most {MAX_METADATA} bytes of JSON.",
            param="metadata",
        )
    return value
