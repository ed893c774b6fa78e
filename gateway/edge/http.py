"""Small ASGI helpers for the HTTP edge: headers, bounded bodies, JSON answers.

The request path is plain ASGI (no Request/Response objects, no middleware stack) because
it runs for every token stream and the gateway's overhead budget is a millisecond.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable

import orjson
from starlette.types import Receive, Scope, Send

from gateway.errors import GatewayError, InvalidRequest, PayloadTooLarge

Headers = list[tuple[bytes, bytes]]

_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
JSON_HEADERS: Headers = [(b"content-type", b"application/json")]
SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a request header (names are lower-case in ASGI)."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def request_id(scope: Scope) -> bytes:
    """The client's `x-request-id` when it is a safe token, else a new one.

    Anything else (CR/LF, spaces, 200 characters) is replaced rather than echoed, so a
    request id can never inject a header or a log field.
    """
    given = header(scope, b"x-request-id")
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return os.urandom(16).hex().encode()


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body, refusing more than `limit` bytes before reading them all."""
    length = header(scope, b"content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise InvalidRequest("content-length is not a number") from None
        if declared > limit:
            raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is larger than the gateway's limit of {limit} bytes")


DISCONNECT = "gateway.disconnect"
"""The scope extension under which `gateway serve` offers a `DisconnectHook`."""


class DisconnectHook:
    """Told by the server when the client's connection is lost before the response ended.

    Under `gateway serve` every request's `scope["extensions"]` carries one, so a stream
    learns of a disconnect from the server's own callback instead of keeping a task waiting
    on `receive()` for `http.disconnect` (one task less per request). Other servers offer
    none, and the watch falls back to `receive()`.
    """

    __slots__ = ("callback", "lost")

    def __init__(self) -> None:
        self.callback: Callable[[], None] | None = None
        self.lost = False

    def fire(self) -> None:
        self.lost = True
        callback, self.callback = self.callback, None
        if callback is not None:
            callback()


def disconnect_hook(scope: Scope) -> DisconnectHook | None:
    extensions = scope.get("extensions")
    return extensions.get(DISCONNECT) if extensions else None


class ClientGone(Exception):
    """The client disconnected before its request was read."""


async def send_bytes(
    send: Send, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]]
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": list(headers)})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_json(
    send: Send, status: int, data: object, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    await send_bytes(send, status, orjson.dumps(data), [*JSON_HEADERS, *headers])


async def send_error(
    send: Send, error: GatewayError, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    extra = [(k.encode(), v.encode()) for k, v in error.headers.items()]
    await send_bytes(send, error.status, error.json(), [*JSON_HEADERS, *headers, *extra])
