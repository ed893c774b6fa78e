"""The edge's own ASGI helpers: the request id, a bounded body read, error answers.

What the relay shares with the edge (headers, the server's hooks, `send_bytes`) is in
`gateway.asgi`.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Coroutine, Iterable, Iterator
from typing import Any, cast

from starlette.types import Message, Receive, Scope, Send

from gateway.asgi import (
    JSON_HEADERS,
    ClientGone,
    Waiting,
    body_reader,
    header,
    run_until_wait,
    send_bytes,
)
from gateway.errors import GatewayError, InvalidRequest, PayloadTooLarge

_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")


def request_id(scope: Scope) -> bytes:
    """The client's `x-request-id` when it is a safe token, else a new one (`new_request_id`).

    Anything else (CR/LF, spaces, 200 characters) is replaced rather than echoed, so a
    request id can never inject a header or a log field.
    """
    given = header(scope, b"x-request-id")
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    # `new_request_id()` without the call through its `__call__` (about 450 instructions).
    return next(new_request_id.ids)


_BATCH = 256
"""Request ids drawn from one `os.urandom` call."""


def _draw() -> Iterator[bytes]:
    """Request ids: 32 hex digits at a time of a batch of random bytes, a batch when the one
    before is used up. A generator: `next()` on it costs about 500 instructions less than a
    method that keeps its place in attributes (callgrind)."""
    while True:
        hexed = os.urandom(16 * _BATCH).hex().encode()
        for at in range(0, len(hexed), 32):
            yield hexed[at : at + 32]


class _RequestIds:
    """New request ids: 32 lower-case hex digits of `os.urandom` (as nginx's `$request_id`),
    drawn 256 at a time: one `getrandom` system call per 256 requests instead of one each.

    Random, not a counter: the id is echoed in every response, to any client, and a
    counter's would tell them how many requests the process served (and between two of
    theirs, how many others sent). A forked child drops what its parent drew
    (`os.register_at_fork`), so it never repeats the parent's ids. For the event loop's
    thread (`ids` is a generator: two threads may not take from it at once).
    """

    __slots__ = ("ids",)

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self.ids = _draw()

    def __call__(self) -> bytes:
        return next(self.ids)


new_request_id = _RequestIds()
os.register_at_fork(after_in_child=new_request_id.reseed)


async def read_body(scope: Scope, receive: Receive, limit: int, stall_s: float) -> bytes:
    """The whole request body, refusing more than `limit` bytes before reading them all;
    TimeoutError when it takes longer than `stall_s` seconds. A body that came with the
    headers (nearly every one) is read without arming a timer."""
    body = start_body(scope, receive, limit, stall_s)
    return body if isinstance(body, bytes) else await body


def start_body(
    scope: Scope, receive: Receive, limit: int, stall_s: float
) -> bytes | Coroutine[Any, Any, bytes]:
    """`read_body` without a coroutine of its own for a body that came with the headers
    (nearly every one): that body, else a coroutine reading the rest (TimeoutError past
    `stall_s`) for the caller to await. A request's set-up reads its body so, saving the
    coroutines of every layer in between."""
    reader = body_reader(scope)
    if reader is not None:  # the server hands a whole body over without `receive()`
        whole = reader.body_now()
        if whole is not None:
            # Its parser framed it to the declared `content-length` (a number, else the
            # request was refused as unparsable): the body's own length is what the
            # declared one would be checked for, without a look through the headers.
            return _within(whole, limit)
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
        return _read_rest(message, receive, limit, stall_s)
    return _one_part(message, limit)  # the one part is here: no wait, no coroutine


async def _read_rest(
    first: Message | Waiting[Message], receive: Receive, limit: int, stall_s: float
) -> bytes:
    async with asyncio.timeout(stall_s):
        return await _read_body(first, receive, limit)


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


def _one_part(message: Message, limit: int) -> bytes:
    """`_read_body` of a body that came whole in its first message (or of a disconnect)."""
    if message["type"] == "http.disconnect":
        raise ClientGone()
    return _within(message.get("body", b""), limit)


def _within(body: bytes, limit: int) -> bytes:
    if len(body) > limit:
        raise _too_large(limit)
    # bytes, as `start_body`'s callers tell it from a coroutine by (ASGI's bodies are bytes)
    return body if type(body) is bytes else bytes(body)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is larger than the gateway's limit of {limit} bytes")


async def send_error(
    send: Send, error: GatewayError, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    extra = [(k.encode(), v.encode()) for k, v in error.headers.items()]
    await send_bytes(send, error.status, error.json(), [*JSON_HEADERS, *headers, *extra])
