"""An upstream's answer checked before anything of it is relayed: the checks every HTTP
provider makes.

`open_event_stream` sends a streaming request and hands back the response once it is a 200
SSE stream (for `gateway.providers.streams` to read); `fetch_json` sends a plain request
and hands back a 200 JSON answer. Anything else becomes the gateway's error, an answer that
is not what was asked for `malformed` (as a provider's streams also call what they cannot
read). Error bodies and non-streamed answers are read within a bound and go through the
provider's `Redactor` first, so no credential the gateway sent comes back out (see
`gateway.providers.redact`).

Deliberately not here: building the requests (`gateway.providers.requests`) and reading a
stream once it is open (`gateway.providers.streams`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import orjson

from gateway.errors import UpstreamError
from gateway.providers.base import error_from_status, translate_error, upstream_errors
from gateway.providers.redact import Redactor
from gateway.transports.native import NativeRequest, NativeResponse, NativeTransport


def malformed(provider: str, what: str) -> UpstreamError:
    return UpstreamError(f"provider {provider!r} sent {what}", kind="malformed")


_ERROR_BODY_LIMIT = 64 * 1024
ANSWER_LIMIT = 64 * 1024 * 1024
"""A non-streaming answer larger than this is refused rather than held in memory."""


def _same(body: bytes) -> bytes:
    return body


async def read_limited(response: httpx.Response, limit: int) -> bytes | None:
    """The decoded body, or None past `limit` bytes (a hostile upstream may send gigabytes)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


async def open_event_stream(
    transport: httpx.AsyncBaseTransport,
    request: httpx.Request | NativeRequest,
    provider: str,
    error_body: Callable[[bytes], bytes] = _same,
    *,
    redact: Redactor,
) -> httpx.Response | NativeResponse:
    """Send a streaming request; the response once it is a 200 SSE stream, else the
    gateway error (`error_body` turns the provider's error body, scrubbed of the
    credentials in `redact`, into OpenAI's shape). A request in bytes goes to the native
    transport (`gateway.providers.requests` makes one only for it)."""
    # `upstream_errors`, written out: its generator and context object cost more than the
    # rest of the native path's checks.
    try:
        if type(request) is NativeRequest:
            assert isinstance(transport, NativeTransport)
            native = await transport.send_raw(request)
            # A stream's answer is checked on its raw fields; any other is read as httpx's
            # below (the error body decoded as on the other path, the same messages).
            if native.status_code == 200:
                content_type = native.headers.raw(b"content-type")
                if content_type is not None and content_type.startswith(b"text/event-stream"):
                    return native
            response = native.as_httpx()
        else:
            assert isinstance(request, httpx.Request)
            response = await transport.handle_async_request(request)
    except httpx.HTTPError as exc:
        raise translate_error(provider, exc) from None
    try:
        if response.status_code != 200:
            with upstream_errors(provider):
                body = await read_limited(response, _ERROR_BODY_LIMIT) or b""
            body = redact.scrub_body(body)
            raise error_from_status(
                provider, response.status_code, error_body(body), response.headers
            )
        content_type = response.headers.get("content-type", "")
        if not content_type.startswith("text/event-stream"):
            raise malformed(
                provider, f"a 200 answer of type {content_type or 'none'!r}, not a stream"
            )
    except BaseException:
        await response.aclose()
        raise
    return response


async def fetch_json(
    transport: httpx.AsyncBaseTransport,
    request: httpx.Request,
    provider: str,
    error_body: Callable[[bytes], bytes] = _same,
    *,
    redact: Redactor,
    headers_into: dict[str, str] | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """Send a plain request; the body and the object of a 200 JSON answer, else the error.
    Either is scrubbed of the credentials in `redact` first. `headers_into` receives the
    answer's headers (the router shows them to the upstream limiter)."""
    with upstream_errors(provider):
        response = await transport.handle_async_request(request)
        if headers_into is not None:
            headers_into.update(response.headers)
        try:
            ok = response.status_code == 200
            body = await read_limited(response, ANSWER_LIMIT if ok else _ERROR_BODY_LIMIT)
        finally:
            await response.aclose()
    if body is None and ok:
        raise malformed(provider, f"an answer larger than {ANSWER_LIMIT >> 20} MiB")
    body = redact.scrub_body(body or b"")
    if not ok:
        raise error_from_status(provider, response.status_code, error_body(body), response.headers)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise malformed(provider, "an answer that is not JSON") from None
    if not isinstance(data, dict):
        raise malformed(provider, "an answer that is not a JSON object")
    return body, data
