"""The OpenAI Responses and Anthropic Messages ingress APIs: their bodies and their errors.

`parse_responses` and `parse_messages` check what the gateway itself relies on (model,
stream, the output token limit, a prompt to estimate) and hand the body on in the client's
own shape (`ClientRequest.api`): the provider relays it as it came to an upstream of the
same API, or translates it (`gateway.protocols`), where what the upstream's API cannot say
is a 400 naming the field. `send_messages_error` answers every failure of the Messages route
in Anthropic's shape and statuses, so the `anthropic` SDK raises its own classes (the
Responses route answers in OpenAI's shape, as Chat does).

`CountTokens` serves `POST /v1/messages/count_tokens`: Anthropic's own count for a model
on an `anthropic` provider, the gateway's estimate (about four characters a token, said so
in `x-gateway-token-count: estimate`) for any other.

Deliberately not here: the steps every route shares (keys, limits, the relay: see
`completions`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from time import perf_counter
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from gateway.asgi import JSON_HEADERS, ClientGone, send_bytes
from gateway.edge.completions import passed_headers, read_request_body, resolve_model
from gateway.edge.http import request_id
from gateway.edge.requests import bad_request, json_object, optional_field
from gateway.edge.shared import runtime_of
from gateway.errors import GatewayError
from gateway.observability.records import RequestRecord
from gateway.protocols.errors import anthropic_error_body
from gateway.providers.anthropic import AnthropicProvider
from gateway.providers.base import Route, UpstreamCall
from gateway.relay.request import ClientRequest


def _limit(body: dict[str, Any], name: str) -> int | None:
    value = optional_field(body, name, int, "a positive integer")
    if value is not None and value <= 0:
        raise bad_request(f"'{name}' must be a positive integer", name)
    return value  # type: ignore[no-any-return]


def _estimate(*parts: Any) -> int:
    chars = 0
    for part in parts:
        if isinstance(part, str):
            chars += len(part)
        elif part is not None:
            chars += len(orjson.dumps(part))
    return max(1, chars // 4) if chars else 1


def parse_responses(route: Route, raw: bytes) -> ClientRequest:
    """A `POST /v1/responses` body (OpenAI's Responses API)."""
    body = json_object(raw)
    stream = optional_field(body, "stream", bool, "true or false") or False
    given = body.get("input")
    if not isinstance(given, (str, list)) or not given:
        raise bad_request("'input' is required: a string or a list of input items", "input")
    instructions = optional_field(body, "instructions", str, "a string")
    for name in ("temperature", "top_p"):
        optional_field(body, name, (int, float), "a number")
    return ClientRequest(
        route=route,
        body=body,
        model=body["model"],
        stream=stream,
        include_usage=False,
        max_tokens=_limit(body, "max_output_tokens"),
        prompt_estimate=_estimate(instructions, given),
        api="responses",
    )


def parse_messages(route: Route, raw: bytes, *, counting: bool = False) -> ClientRequest:
    """A `POST /v1/messages` body (Anthropic's Messages API); `counting`: a count_tokens
    body, which has no `max_tokens`."""
    body = json_object(raw)
    stream = optional_field(body, "stream", bool, "true or false") or False
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' is required and must be a non-empty list", "messages")
    if not all(isinstance(m, dict) for m in messages):
        raise bad_request("'messages' must be a list of objects", "messages")
    max_tokens = _limit(body, "max_tokens")
    if max_tokens is None and not counting:
        raise bad_request(
            "'max_tokens' is required: the most output tokens to generate", "max_tokens"
        )
    for name in ("temperature", "top_p"):
        optional_field(body, name, (int, float), "a number")
    return ClientRequest(
        route=route,
        body=body,
        model=body["model"],
        stream=stream,
        include_usage=False,
        max_tokens=max_tokens,
        prompt_estimate=_estimate(body.get("system"), messages, body.get("tools")),
        api="messages",
    )


async def send_messages_error(
    send: Send, error: GatewayError, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """A failure before the answer started, as Anthropic answers it: its body shape, and
    the gateway's status (Anthropic's own statuses are the HTTP ones: 400, 401, 403, 404,
    413, 429, 5xx; its SDK picks its exception class by status)."""
    extra = [(k.encode(), v.encode()) for k, v in error.headers.items()]
    body = orjson.dumps(anthropic_error_body(error.status, error.message))
    await send_bytes(send, error.status, body, [*JSON_HEADERS, *headers, *extra])


_PASSED = (b"anthropic-version", b"anthropic-beta")
_ESTIMATE = (b"x-gateway-token-count", b"estimate")


class CountTokens:
    """`POST /v1/messages/count_tokens`: the key and the model checked as on /v1/messages
    (no limits taken: counting generates nothing), answered in Anthropic's shape."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rt = runtime_of(scope)
        started_at = perf_counter()
        rid = request_id(scope)
        rec = RequestRecord(request_id=rid.decode(), route="messages.count_tokens")
        headers: list[tuple[bytes, bytes]] = [(b"x-request-id", rid)]
        try:
            key = rt.keys.authenticate(scope)
            rec.key_id = key.id
            body = read_request_body(rt, scope, receive)
            raw = body if isinstance(body, bytes) else await body
            req = parse_messages("chat.completions", raw, counting=True)
            model = resolve_model(rt, key, req, rec)
            provider = rt.relay.providers[model.provider]
            if isinstance(provider, AnthropicProvider):
                call = UpstreamCall(
                    route="chat.completions",
                    body=req.body,
                    # as the router sends its first deployment: with that one's timeouts
                    model=rt.relay.router.deployments(model.name)[0].call_model,
                    stream=False,
                    include_usage=False,
                    request_id=rec.request_id,
                    api="messages",
                    passed_headers=passed_headers(scope, _PASSED),
                )
                body = await provider.count_tokens(call)
            else:
                body = orjson.dumps({"input_tokens": req.prompt_estimate})
                headers.append(_ESTIMATE)
            rec.status = 200
            await send_bytes(send, 200, body, [*JSON_HEADERS, *headers])
        except GatewayError as exc:
            rec.status, rec.outcome, rec.error = exc.status, exc.outcome, exc.message
            await send_messages_error(send, exc, headers)
        except ClientGone:
            rec.status, rec.outcome = 499, "client_cancelled"
        finally:
            rec.duration_s = perf_counter() - started_at
            rec.ended_at = time.time()
            rt.finished.add(rec)
