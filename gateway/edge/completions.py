"""The three relayed routes: /v1/chat/completions, /v1/completions, /v1/embeddings.

One ASGI endpoint per route, in the order every request meets the gateway: key, body,
model, limits, then the relay. Each step's failure is a `GatewayError`, answered here with
OpenAI's error shape while the response has not started. Whatever happens, the request
leaves one record (metrics and the request log) and settles its reservation, both off the
request path.
"""

from __future__ import annotations

import time
from time import perf_counter

import structlog
from starlette.types import Receive, Scope, Send

from gateway.config import KeyConfig
from gateway.edge.http import (
    ClientGone,
    Headers,
    body_writer,
    disconnect_hook,
    read_body,
    request_id,
    send_error,
)
from gateway.edge.requests import ClientRequest, parse_request
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    ModelNotAllowed,
    ModelNotFound,
    QuotaExceeded,
    RateLimited,
    ServiceUnavailable,
)
from gateway.limits.base import LimiterUnavailable, Reservation
from gateway.limits.headers import rate_limit_headers, retry_after_header
from gateway.observability.records import RequestRecord
from gateway.providers.base import Route
from gateway.relay.stream import RelayContext, relay_completion, relay_stream
from gateway.state import GatewayState

log = structlog.get_logger("gateway")

_QUOTAS = frozenset({"daily_tokens", "monthly_tokens"})
_LOGGED_NAME_MAX = 200


class RelayEndpoint:
    def __init__(self, state: GatewayState, route: Route) -> None:
        self.state = state
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        st = self.state
        started_at = perf_counter()
        if st.start_budget is not None:
            await st.start_budget.take()
        rid = request_id(scope)
        rec = RequestRecord(request_id=rid.decode(), route=self.route)
        headers: Headers = [(b"x-request-id", rid)]
        reservation: Reservation | None = None
        try:
            if st.draining:
                raise ServiceUnavailable(
                    "the gateway is shutting down; retry and another replica will answer",
                    headers={"retry-after": "1", "connection": "close"},
                )
            key = st.authenticate(scope)
            rec.key_id = key.id
            try:
                # A client that declares a body and stalls must not hold its request forever.
                raw = await read_body(
                    scope, receive, st.config.max_body_bytes, st.config.timeouts.idle
                )
            except TimeoutError:
                raise InvalidRequest(
                    f"the request body did not arrive within {st.config.timeouts.idle:g} s",
                    status=408,
                    code="request_timeout",
                ) from None
            req = parse_request(self.route, raw)
            rec.stream = req.stream
            if st.config.log_bodies:
                rec.request_body = raw
            model = st.models.get(req.model)
            # The log line names what was asked for, bounded: its metrics label is bounded
            # by `Metrics` (a configured name, else "other").
            rec.model = req.model if model is not None else req.model[:_LOGGED_NAME_MAX]
            if model is None:
                raise ModelNotFound(
                    f"The model '{req.model[:200]}' does not exist "
                    "or you do not have access to it.",
                    param="model",
                )
            if not key.may_use(model.name):
                raise ModelNotAllowed(
                    f"The key '{key.id}' may not use the model '{model.name}'.", param="model"
                )
            rec.provider = model.provider
            reservation = await self._admit(key, req, rid.decode(), headers)
            ctx = RelayContext(
                request=req,
                models=[model, *(st.models[name] for name in model.fallbacks)],
                request_id=rec.request_id,
                record=rec,
                headers=headers,
                started_at=started_at,
                disconnect=disconnect_hook(scope),
                writer=body_writer(scope),
            )
            if req.stream:
                await relay_stream(st, ctx, receive, send)
            else:
                await relay_completion(st, ctx, receive, send)
        except GatewayError as exc:
            rec.status, rec.outcome, rec.error = exc.status, exc.outcome, exc.message
            await send_error(send, exc, headers)
        except ClientGone:
            rec.status, rec.outcome = 499, "client_cancelled"
        except Exception as exc:
            # A gateway bug: logged with its traceback, answered in OpenAI's shape if the
            # answer has not started (a started stream is closed by uvicorn).
            log.error("unhandled error", route=self.route, exc_info=exc)
            rec.outcome, rec.error = "upstream_error", f"internal error ({type(exc).__name__})"
            if rec.status == 0:
                rec.status = 500
                error = GatewayError("the gateway failed to handle this request; it was logged")
                await send_error(send, error, headers)
        finally:
            rec.duration_s = perf_counter() - started_at
            if reservation is not None:
                used = rec.prompt_tokens + rec.completion_tokens
                st.limiter.settle_soon(reservation, used)  # type: ignore[union-attr]
            rec.ended_at = time.time()
            st.finished.add(rec)

    async def _admit(
        self, key: KeyConfig, req: ClientRequest, rid: str, headers: Headers
    ) -> Reservation | None:
        st = self.state
        limiter = st.limiter
        assert limiter is not None
        tokens = req.prompt_estimate
        if req.route != "embeddings":
            tokens += req.max_tokens or st.config.default_max_tokens
        try:
            admission = await limiter.admit(key, tokens, rid)
        except LimiterUnavailable:
            raise ServiceUnavailable(
                "rate limits cannot be checked right now (limits backend unreachable); retry",
                headers={"retry-after": "1"},
            ) from None
        headers.extend(rate_limit_headers(admission.state))
        if admission.allowed:
            return admission.reservation
        limit = admission.denied or "rpm"
        st.metrics.rate_limited(key.id, limit)
        name, value = retry_after_header(admission.retry_after)
        headers.append((name, value))
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
