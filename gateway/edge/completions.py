"""The relayed routes: /v1/chat/completions, /v1/completions, /v1/embeddings, and the
Responses and Messages APIs (/v1/responses, /v1/messages: see `apis`).

One ASGI endpoint per route, in the order every request meets the gateway: key, body,
model, limits, then the relay. Each step's failure is a `GatewayError`, answered here in
the route's error shape while the response has not started. Whatever happens, the request
leaves one record (metrics and the request log) and settles its reservation, both off the
request path.

What differs between ingress APIs is given to `RelayEndpoint`: how the body is parsed into a
`ClientRequest` (which also names the upstream API to call, `route`) and how an error is
answered (and, for Messages, which client headers go on to an upstream of its API).
Everything else (keys, limits, fallbacks, the relay, accounting) is shared.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import replace
from datetime import UTC, datetime
from time import perf_counter
from typing import Any

import structlog
from starlette.types import Receive, Scope, Send

from gateway.asgi import STATE_KEY, ClientGone, Headers, body_writer, disconnect_hook
from gateway.config import KeyConfig, ModelConfig
from gateway.edge.http import request_id, send_error, start_body
from gateway.edge.requests import parse_request
from gateway.edge.shared import EdgeRuntime
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    ModelNotAllowed,
    ModelNotFound,
    QuotaExceeded,
    RateLimited,
    ServiceUnavailable,
)
from gateway.limits.base import Admission, LimiterUnavailable, Reservation
from gateway.limits.headers import rate_limit_headers, retry_after_header
from gateway.observability.records import RequestRecord
from gateway.providers.base import Route
from gateway.relay.request import ClientRequest
from gateway.relay.stream import RelayContext

log = structlog.get_logger("gateway")

Parse = Callable[[Route, bytes], ClientRequest]
"""An ingress API's body parser: a checked request, or an `InvalidRequest`."""
AnswerError = Callable[[Send, GatewayError, Iterable[tuple[bytes, bytes]]], Awaitable[None]]
"""An ingress API's error answer, given the response headers so far."""

_QUOTAS = frozenset({"daily_tokens", "monthly_tokens"})
_BUDGETS = frozenset({"daily_usd", "monthly_usd"})
_LOGGED_NAME_MAX = 200


class RelayEndpoint:
    __slots__ = ("_answer_error", "_parse", "_passed", "name", "route")

    def __init__(
        self,
        route: Route,
        parse: Parse = parse_request,
        answer_error: AnswerError = send_error,
        *,
        name: str | None = None,
        passed: tuple[bytes, ...] = (),
    ) -> None:
        self.route = route
        self.name = name or route
        """The route's name in the request log (`responses`, `messages`, ...)."""
        self._parse = parse
        self._answer_error = answer_error
        self._passed = passed
        """Client headers passed on to an upstream of the client's own API."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rt: EdgeRuntime = scope["state"][STATE_KEY]
        started_at = perf_counter()
        budget = rt.start_budget
        if budget is not None and not budget.take_now():
            await budget.take()
        rid = request_id(scope)
        rec = RequestRecord(rid.decode(), self.name)
        if rt.traces is not None:  # tracing on: None unless this request is sampled
            rec.trace = rt.traces.start(scope["headers"], started_at)
        headers: Headers = [(b"x-request-id", rid)]
        reservation: Reservation | None = None
        try:
            ctx, reservation = await self._open(rt, scope, receive, rec, headers, started_at)
            if ctx.request.stream:
                await rt.relay.stream(ctx, receive, send)
            else:
                await rt.relay.complete(ctx, receive, send)
        except GatewayError as exc:
            rec.status, rec.outcome, rec.error = exc.status, exc.outcome, exc.message
            await self._answer_error(send, exc, headers)
        except ClientGone:
            rec.status, rec.outcome = 499, "client_cancelled"
        except Exception as exc:
            await self._failed(exc, rec, send, headers)
        finally:
            _finish(rt, rec, reservation, started_at)

    async def _open(
        self,
        rt: EdgeRuntime,
        scope: Scope,
        receive: Receive,
        rec: RequestRecord,
        headers: Headers,
        started_at: float,
    ) -> tuple[RelayContext, Reservation | None]:
        """Everything before the relay: key, body, model, limits. Raises the request's
        `GatewayError`; the reservation, when there is one, is the caller's to settle."""
        if rt.draining:
            raise ServiceUnavailable(
                "the gateway is shutting down; retry and another replica will answer",
                headers={"retry-after": "1", "connection": "close"},
            )
        key = rt.keys.authenticate(scope)
        rec.key_id = key.id
        body = read_request_body(rt, scope, receive)
        raw = body if isinstance(body, bytes) else await body
        req = self._parse(self.route, raw)
        if self._passed:
            req = replace(req, passed_headers=passed_headers(scope, self._passed))
        rec.stream = req.stream
        if rt.config.log_bodies:
            rec.request_body = raw
        model = resolve_model(rt, key, req, rec)
        output = _output_reserve(rt, req)
        # Positional, in the fields' order (request, models, request_id, record, headers,
        # started_at, disconnect, writer, reserved_tokens): a keyword call costs more.
        ctx = RelayContext(
            req,
            [model, *[rt.models[name] for name in model.fallbacks]] if model.fallbacks else [model],
            rec.request_id,
            rec,
            headers,
            started_at,
            disconnect_hook(scope),
            body_writer(scope),
            req.prompt_estimate + output,
        )
        # The limits, reserving the prompt estimate and `output` tokens (`_output_reserve`),
        # awaited here rather than in a coroutine of their own: one frame less for the
        # request to pass through. The reservation's cost is at the primary model's prices:
        # settled to the real cost of whichever model answered when the request ends.
        cost = rt.prices.reserve(model.name, req.prompt_estimate, output)
        try:
            admission = await rt.limiter.admit(key, ctx.reserved_tokens, rec.request_id, cost)
        except LimiterUnavailable:
            raise ServiceUnavailable(
                "rate limits cannot be checked right now (limits backend unreachable); retry",
                headers={"retry-after": "1"},
            ) from None
        return ctx, _admitted(rt, key, admission, headers)

    async def _failed(
        self, exc: Exception, rec: RequestRecord, send: Send, headers: Headers
    ) -> None:
        # A gateway bug: logged with its traceback, answered in the route's shape if the
        # answer has not started (a started stream is closed by uvicorn).
        log.error("unhandled error", route=self.name, exc_info=exc)
        rec.outcome, rec.error = "upstream_error", f"internal error ({type(exc).__name__})"
        if rec.status == 0:
            rec.status = 500
            error = GatewayError("the gateway failed to handle this request; it was logged")
            await self._answer_error(send, error, headers)


def passed_headers(scope: Scope, names: tuple[bytes, ...]) -> tuple[tuple[str, str], ...]:
    return tuple(
        (bytes(name).decode("latin-1"), bytes(value).decode("latin-1"))
        for name, value in scope["headers"]
        if name in names
    )


def _finish(
    rt: EdgeRuntime, rec: RequestRecord, reservation: Reservation | None, started_at: float
) -> None:
    """The request's record off to the metrics and the log, its reservation settled."""
    rec.duration_s = perf_counter() - started_at
    if rec.prompt_tokens or rec.completion_tokens:
        # The prices of the deployment that answered (of a fallback model's, or of another
        # upstream model than the model's first deployment).
        rec.cost_nanos = rt.prices.cost_of(
            rec.answered_by or rec.model,
            rec.deployment,
            rec.prompt_tokens,
            rec.completion_tokens,
            rec.cached_tokens,
            rec.cache_write_tokens,
        )
    if reservation is not None:
        rt.limiter.settle_soon(
            reservation, rec.prompt_tokens + rec.completion_tokens, rec.cost_nanos
        )
    rec.ended_at = time.time()
    rt.finished.add(rec)


def read_request_body(
    rt: EdgeRuntime, scope: Scope, receive: Receive
) -> bytes | Coroutine[Any, Any, bytes]:
    """The request body when it came with the head (nearly always), else a coroutine for
    the caller to await (`start_body`: no coroutine in between for the usual body)."""
    idle = rt.config.timeouts.idle
    # A client that declares a body and stalls must not hold its request forever.
    body = start_body(scope, receive, rt.config.max_body_bytes, idle)
    return body if isinstance(body, bytes) else _in_time(body, idle)


async def _in_time(rest: Coroutine[Any, Any, bytes], idle: float) -> bytes:
    try:
        return await rest
    except TimeoutError:
        raise InvalidRequest(
            f"the request body did not arrive within {idle:g} s",
            status=408,
            code="request_timeout",
        ) from None


def resolve_model(
    rt: EdgeRuntime, key: KeyConfig, req: ClientRequest, rec: RequestRecord
) -> ModelConfig:
    model = rt.models.get(req.model)
    # The log line names what was asked for, bounded: its metrics label is bounded by
    # `Metrics` (a configured name, else "other").
    rec.model = req.model if model is not None else req.model[:_LOGGED_NAME_MAX]
    if model is None:
        raise ModelNotFound(
            f"The model '{req.model[:200]}' does not exist or you do not have access to it.",
            param="model",
        )
    if not key.may_use(model.name):
        raise ModelNotAllowed(
            f"The key '{key.id}' may not use the model '{model.name}'.", param="model"
        )
    rec.provider = model.provider
    return model


def _output_reserve(rt: EdgeRuntime, req: ClientRequest) -> int:
    """Output tokens a request reserves: its max_tokens, else the default (none for
    embeddings)."""
    return 0 if req.route == "embeddings" else req.max_tokens or rt.config.default_max_tokens


def _admitted(
    rt: EdgeRuntime, key: KeyConfig, admission: Admission, headers: Headers
) -> Reservation | None:
    """The limits' verdict: the reservation of an admitted request (None when the limiter
    keeps none), else the error naming the limit reached. Either way the rate-limit
    headers join the response's."""
    headers.extend(rate_limit_headers(admission.state))
    if admission.allowed:
        return admission.reservation
    limit = admission.denied or "rpm"
    rt.metrics.rate_limited(key.id, limit)
    name, value = retry_after_header(admission.retry_after)
    headers.append((name, value))
    if limit in _BUDGETS:
        raise QuotaExceeded(_budget_message(key, limit, admission.retry_after))
    cls = QuotaExceeded if limit in _QUOTAS else RateLimited
    what = {
        "rpm": "requests per minute",
        "tpm": "tokens per minute",
        "max_concurrent": "concurrent requests",
        "daily_tokens": "daily token quota",
        "monthly_tokens": "monthly token quota",
    }[limit]
    raise cls(
        f"Rate limit reached for key '{key.id}' on {what}. Retry after {value.decode()} s."
        if cls is RateLimited
        else f"Key '{key.id}' has used its {what}. It resets at the start of the next "
        f"{'day' if limit == 'daily_tokens' else 'month'} (UTC)."
    )


def _budget_message(key: KeyConfig, limit: str, retry_after: float) -> str:
    daily = limit == "daily_usd"
    budget = key.budget
    amount = (budget.daily_usd if daily else budget.monthly_usd) if budget else None
    # retry_after runs to the period's end (the limiter's clock, perhaps Redis's): to the
    # minute, that is the UTC midnight it resets at.
    resets = datetime.fromtimestamp(round((time.time() + retry_after) / 60) * 60, UTC)
    # cents for budgets of a dollar or more, every digit below that
    of = "" if amount is None else f" of ${amount:,.2f}" if amount >= 1 else f" of ${amount:g}"
    return (
        f"Key '{key.id}' has used its {'daily' if daily else 'monthly'} budget{of}. It resets "
        f"at {resets:%Y-%m-%d %H:%M} UTC (in {retry_after:,.0f} s)."
    )
