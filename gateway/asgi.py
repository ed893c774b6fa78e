"""The contract between `gateway serve` and the app, and the small ASGI helpers the relay
and the edge share: headers, the server's disconnect hook and direct body writer, a cheap
start for sends and receives.

The request path is plain ASGI (no Request/Response objects, no middleware stack) because
it runs for every token stream and the gateway's overhead budget is a millisecond. This
module knows nothing of requests, keys or errors: what the edge answers lives in
`gateway.edge.http`.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Generator, Iterable
from typing import Any, Generic, Protocol, TypeVar, cast

from starlette.types import Scope, Send

Headers = list[tuple[bytes, bytes]]
T = TypeVar("T")

STATE_KEY = "gateway"
"""The runtime's key in the app's lifespan state: `scope["state"]` for a request,
`app_state` for `gateway serve`'s HTTP protocol, `server.lifespan.state` for the server."""

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
    write (a coroutine, a message and the server's checks less per token), and so are a
    stream's start (head and first event) and end."""

    def write(self, data: bytes) -> bool:
        """True when `data` was written; False when it was not and the caller must `send`
        it instead (the response has not started or is not chunked, the client's buffer is
        full so the send must wait, or the client is gone)."""

    def start(self, status: int, headers: Headers, data: bytes) -> bool:
        """The response's start and its first body part (more to follow), as the two
        `send`s would write them; False when nothing was written and the caller must `send`
        both instead (as for `write`, or when the head needs the server's slower way)."""

    def end(self, data: bytes) -> bool:
        """The body's last part (may be empty) and its end, as `send` would write them;
        False when nothing was written and the caller must `send` it instead."""


def body_writer(scope: Scope) -> BodyWriter | None:
    extensions = scope.get("extensions")
    return extensions.get(BODY_WRITER) if extensions else None


BODY_READER = "gateway.body_reader"
"""The scope extension under which `gateway serve` offers a `BodyReader`."""


class BodyReader(Protocol):
    """Hands over a request body that came whole without an ASGI `receive()`: under
    `gateway serve`, nearly every request's body came with its head, and `receive()` is a
    coroutine and a message for it (about 0.5 µs more, run to its end at once)."""

    def body_now(self) -> bytes | None:
        """The whole body, taken as `receive()` would take it, when `receive()` would hand it
        over at once as its one message (`more_body` false); None when it would not (a body
        still arriving, `100 Continue` to send, the client gone, the body already taken):
        then call `receive()`."""


def body_reader(scope: Scope) -> BodyReader | None:
    extensions = scope.get("extensions")
    return extensions.get(BODY_READER) if extensions else None


class ClientGone(Exception):
    """The client disconnected before its request was read."""


async def send_bytes(
    send: Send, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]]
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": list(headers)})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def presented_secret(scope: Scope) -> bytes:
    """The key a request presents: `Authorization: Bearer KEY` or `x-api-key: KEY`,
    whichever comes first; b"" when there is none."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            # The usual spelling, without the partition, `lower()` and `bytes()` (about
            # 950 instructions less, callgrind); the same token as the general way below.
            if value[:7] == b"Bearer " and type(value) is bytes:
                return value[7:].strip()
            scheme, _, token = bytes(value).partition(b" ")
            if scheme.lower() == b"bearer":
                return token.strip()
        elif name == b"x-api-key":
            return bytes(value).strip()
    return b""
