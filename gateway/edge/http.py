"""Small ASGI helpers for the HTTP edge: headers, bounded bodies, JSON answers.

The request path is plain ASGI (no Request/Response objects, no middleware stack) because
it runs for every token stream and the gateway's overhead budget is a millisecond.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable, Coroutine, Generator, Iterable
from typing import Any, Generic, Protocol, TypeVar, cast

import orjson
from starlette.types import Message, Receive, Scope, Send

from gateway.errors import GatewayError, InvalidRequest, PayloadTooLarge

Headers = list[tuple[bytes, bytes]]
T = TypeVar("T")

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


async def read_body(scope: Scope, receive: Receive, limit: int, stall_s: float) -> bytes:
    """The whole request body, refusing more than `limit` bytes before reading them all;
    TimeoutError when it takes longer than `stall_s` seconds. A body that came with the
    headers (nearly every one) is read without arming a timer."""
    length = header(scope, b"content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise InvalidRequest("content-length is not a number") from None
        if declared > limit:
            raise _too_large(limit)
    message = run_until_wait(cast("Coroutine[Any, Any, Message]", receive()))
    if isinstance(message, Waiting) or message.get("more_body", False):
        async with asyncio.timeout(stall_s):
            return await _read_body(message, receive, limit)
    return await _read_body(message, receive, limit)  # the one part is here: no wait


async def _read_body(first: Message | Waiting[Message], receive: Receive, limit: int) -> bytes:
    message = await first if isinstance(first, Waiting) else first
    chunks: list[bytes] = []
    size = 0
    while True:
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
        message = await receive()
    return b"".join(chunks)


class Waiting(Generic[T]):
    """The rest of a coroutine that had to wait (`run_until_wait`). Awaiting it hands what
    the coroutine waits on to the awaiting task and resumes the coroutine after, as `await`
    (`yield from`) would have, and gives the coroutine's result."""

    __slots__ = ("_coro", "_waiting_on")

    def __init__(self, coro: Coroutine[Any, Any, T], waiting_on: Any) -> None:
        self._coro = coro
        self._waiting_on = waiting_on

    def __await__(self) -> Generator[Any, None, T]:
        coro, waiting_on = self._coro, self._waiting_on
        while True:
            try:
                yield waiting_on
            except BaseException as exc:  # thrown into the task (a cancellation): pass it on
                try:
                    waiting_on = coro.throw(exc)
                except StopIteration as stop:
                    return cast(T, stop.value)
            else:
                try:
                    waiting_on = coro.send(None)
                except StopIteration as stop:
                    return cast(T, stop.value)


def run_until_wait(coro: Coroutine[Any, Any, T]) -> T | Waiting[T]:
    """Run `coro` up to its first wait, in the caller's task: its result if it finished
    without waiting (then no task switch and no timer was needed), else `Waiting` for the
    rest. A cheap start for calls that usually finish at once (an ASGI send or receive)."""
    try:
        waiting_on = coro.send(None)
    except StopIteration as stop:
        return cast(T, stop.value)
    return Waiting(coro, waiting_on)


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


BODY_WRITER = "gateway.body_writer"
"""The scope extension under which `gateway serve` offers a `BodyWriter`."""


class BodyWriter(Protocol):
    """Writes one part of a streamed (chunked) response body straight to the connection,
    without an ASGI message: under `gateway serve`, each relayed upstream read is one such
    write (a coroutine, a message and the server's checks less per token)."""

    def write(self, data: bytes) -> bool:
        """True when `data` was written; False when it was not and the caller must `send`
        it instead (the response has not started or is not chunked, the client's buffer is
        full so the send must wait, or the client is gone)."""


def body_writer(scope: Scope) -> BodyWriter | None:
    extensions = scope.get("extensions")
    return extensions.get(BODY_WRITER) if extensions else None


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
