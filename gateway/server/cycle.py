"""The gateway's own request cycle (`_Cycle`) under uvicorn's httptools protocol, the
slotted events and flow control each connection holds, and the server's keep-alive timer.

`_Cycle` replaces uvicorn's `RequestResponseCycle`: one object per request that is also the
scope's disconnect hook and body writer, its response head built and checked in one pass
(uvicorn's field-by-field checks are the fallback for anything unusual, with the same
errors). Imported through the `gateway.server` package, whose version guard runs first.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
from typing import TYPE_CHECKING, Any, cast

from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
)
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from gateway.asgi import DisconnectHook

if TYPE_CHECKING:
    from gateway.server.protocol import BoundedHttpToolsProtocol


_logger = logging.getLogger("uvicorn.error")
"""uvicorn's error logger (`_Shared.logger` is the same one)."""


class _ListEvent:
    """`asyncio.Event`'s `wait`, `set`, `clear` and `is_set`, with the fields in slots and
    the waiters in a list made for the first one. asyncio's keeps its waiters in a deque,
    which takes 760 bytes even empty, and its fields in a dict; a connection holds two
    events (its flow control's and the request cycle's) for as long as a stream is open,
    and most never have a waiter (at most one: the app waiting for its body, or a send for
    the client's buffer to drain)."""

    __slots__ = ("_value", "_waiters")

    def __init__(self) -> None:
        self._value = False
        self._waiters: list[asyncio.Future[bool]] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if not self._value:
            self._value = True
            for waiter in self._waiters or ():
                if not waiter.done():
                    waiter.set_result(True)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        if self._value:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            self._waiters.remove(waiter)


class _Flow:
    """uvicorn's `FlowControl` (0.55's, as 0.50's), in slots and with a `_ListEvent` made
    the first time writing pauses (most connections never pause: one object less each)."""

    __slots__ = ("_is_writable_event", "_transport", "read_paused", "write_paused")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.read_paused = False
        self.write_paused = False
        self._is_writable_event: _ListEvent | None = None  # None: never paused, so set

    async def drain(self) -> None:
        event = self._is_writable_event
        if event is not None:
            await event.wait()

    def pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            self._transport.resume_reading()

    def pause_writing(self) -> None:
        if not self.write_paused:
            self.write_paused = True
            if self._is_writable_event is None:
                self._is_writable_event = _ListEvent()
            self._is_writable_event.clear()

    def resume_writing(self) -> None:
        if self.write_paused:
            self.write_paused = False
            cast(_ListEvent, self._is_writable_event).set()


class _KeepAlive:
    """The keep-alive timeouts of one server's idle connections, on one loop timer.

    uvicorn arms a timer per response (`loop.call_later`) and cancels it when the next
    request comes or the connection closes: about 2 µs per connection of uvloop's timer
    handle, set up and torn down, for a timer that almost never fires (clients send their
    next request or close long before it). Every connection waits the same timeout, so
    deadlines come in the order they were armed: idle connections are kept in that order
    (an `OrderedDict`: O(1) to add, remove and find the first) with their deadlines, and one
    timer waits for the first, then for the next still there. A connection closes at the
    deadline its own timer would have had.
    """

    __slots__ = ("_idle", "_loop", "_timeout", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self._timeout = timeout
        self._idle: collections.OrderedDict[BoundedHttpToolsProtocol, float] = (
            collections.OrderedDict()
        )
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._idle)

    def arm(self, protocol: BoundedHttpToolsProtocol) -> None:
        """`protocol.timeout_keep_alive_handler` at the timeout from now (the connection
        must not be armed already: it would keep its place, not its new deadline's)."""
        deadline = self._loop.time() + self._timeout
        self._idle[protocol] = deadline
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._expire)

    def disarm(self, protocol: BoundedHttpToolsProtocol) -> None:
        # The timer stays: when it fires, it finds a later deadline first and waits again.
        self._idle.pop(protocol, None)

    def _expire(self) -> None:
        self._timer = None
        idle = self._idle
        now = self._loop.time()
        while idle:
            protocol, deadline = next(iter(idle.items()))
            if deadline > now:
                self._timer = self._loop.call_at(deadline, self._expire)
                return
            del idle[protocol]
            protocol._idle = False
            protocol.timeout_keep_alive_handler()


_GOOD_NAME = re.compile(rb'[^\x00-\x1f\x7f()<>@,;:\[\]={} \t\\"A-Z]*')
"""A header name uvicorn takes as it is: lower-case, none of the characters it refuses in a
name (`HEADER_RE`)."""
_FRAMING = frozenset((b"content-length", b"transfer-encoding", b"connection"))
_CONTROL = bytes(range(0x20)).replace(b"\t", b"") + b"\x7f"
"""The characters uvicorn refuses in a header value (`HEADER_VALUE_RE`): control
characters, tab excepted."""
_CONTROL_TO_NUL = bytes(0 if byte in _CONTROL else byte for byte in range(256))
"""A `translate` table: each of `_CONTROL` to NUL (one of them), every other byte as it is."""
_GOOD_NAMES: set[bytes] = set()
_GOOD_NAMES_KEPT = 1024


def _lines(headers: Any) -> bytes | None:
    """`headers` as head lines (`name: value\r\n` each), or None when one needs uvicorn's
    per-field work: every name must be a good one (`_good_name`), and no value may hold a
    control character (no header injection; good names have none). A head that does not
    pass takes uvicorn's way (`_Cycle._uvicorn_head`), which also raises its errors.

    A set lookup per name, one join of the parts (a third less than a `%` format per
    field) and one `translate` over the values: uvicorn does two regex searches and a
    `lower()` per field, and one regex over the lines took 3.4 µs for a streamed answer's 10
    fields. The values (every fourth part) are checked without the names, by a table that
    sends each control character to NUL, then a search for NUL (a `memchr`): the table
    leaves good values as they are, so `translate` returns them without a copy, where
    deleting `_CONTROL` from the whole lines and comparing lengths built a 256-entry table
    and a copy on each call (22,700 -> 19,800 instructions for those 10 fields, measured)."""
    parts: list[bytes] = []
    try:
        for name, value in headers:
            if name not in _GOOD_NAMES and not _good_name(name):
                return None
            parts += (name, b": ", value, b"\r\n")
    except TypeError:  # an unhashable name (a bytearray), or no iterable: uvicorn's way
        return None
    lines = b"".join(parts)
    if 0 in b"".join(parts[2::4]).translate(_CONTROL_TO_NUL):
        return None
    return lines


def _good_name(name: bytes) -> bool:
    """Whether uvicorn takes `name` as it is and it does not change the framing (those
    three take uvicorn's way); remembered when good (at most 1024 names of 64 bytes)."""
    if name in _FRAMING or _GOOD_NAME.fullmatch(name) is None:
        return False
    if len(_GOOD_NAMES) < _GOOD_NAMES_KEPT and len(name) <= 64:
        _GOOD_NAMES.add(bytes(name))
    return True


_TAIL = {
    (True, False): b"\r\n",
    (True, True): b"transfer-encoding: chunked\r\n\r\n",
    (False, False): b"connection: close\r\n\r\n",
    (False, True): b"connection: close\r\ntransfer-encoding: chunked\r\n\r\n",
}
"""A checked head's end, by (keep-alive, chunked)."""


class _Cycle(DisconnectHook):
    """One request and its response: uvicorn 0.55's `RequestResponseCycle` with the same
    attributes its protocol and server read, in slots, and besides:

    - the response's head built in one piece (`_lines`);
    - the head held until the first body part and written with it, one write and one
      packet instead of two (not for HEAD, whose answer has no body part, nor after
      `100 Continue`, which must be followed by the head on its own);
    - the scope's `DisconnectHook` (`fire`, from `connection_lost`), `BodyWriter`
      (`write`, `start`, `end`: `send`'s own steps, `_begin` and `_body`, without the
      messages and coroutines) and `BodyReader` (`body_now`): no objects of their own.
    """

    __slots__ = (
        "__weakref__",  # for tests/test_server.py's check that a request is freed at once
        "_head",
        "_hold",
        "_is_head",
        "_protocol",
        "body",
        "chunked_encoding",
        "disconnected",
        "expected_content_length",
        "flow",
        "keep_alive",
        "message_event",
        "more_body",
        "response_complete",
        "response_started",
        "scope",
        "transport",
        "waiting_for_100_continue",
    )

    def __init__(
        self, protocol: BoundedHttpToolsProtocol, keep_alive: bool, expect: bool, is_head: bool
    ) -> None:
        self.callback = None
        self.lost = False
        self._protocol: BoundedHttpToolsProtocol | None = protocol
        self.transport = protocol.transport
        self.flow = protocol.flow
        self.message_event = _ListEvent()
        self.scope: Any = None
        self.disconnected = False
        self.keep_alive = keep_alive
        self.waiting_for_100_continue = expect
        self.body: bytes | bytearray = b""
        self.more_body = True
        self.response_started = False
        self.response_complete = False
        self.chunked_encoding: bool | None = None
        self.expected_content_length = 0
        self._is_head = is_head
        self._hold = not (expect or is_head)
        self._head: bytes | None = None

    async def run_asgi(self, app: Any) -> None:
        # uvicorn 0.55's (a held head is written before the connection closes); its logger
        # is this module's (the process's one "uvicorn.error", as `_Shared.logger`), not
        # read through the protocol on every request.
        try:
            result = await app(self.scope, self.receive, self.send)
        except BaseException as exc:
            _logger.error("Exception in ASGI application\n", exc_info=exc)
            if not self.response_started:
                await self.send_500_response()
            else:
                self._close()
        else:
            if result is not None:
                _logger.error("ASGI callable should return None, but returned '%s'.", result)
                self._close()
            elif not self.response_started and not self.disconnected:
                _logger.error("ASGI callable returned without starting response.")
                await self.send_500_response()
            elif not self.response_complete and not self.disconnected:
                _logger.error("ASGI callable returned without completing response.")
                self._close()
        finally:
            # uvicorn's `on_response = lambda: None`; and no references back from the cycle
            # (the scope's extensions and the protocol hold it), so that a closed
            # connection's objects go at once rather than at the collector's next pass.
            self._protocol = self.scope = None

    async def send_500_response(self) -> None:
        await self.send(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", b"21"),
                    (b"connection", b"close"),
                ],
            }
        )
        await self.send(
            {"type": "http.response.body", "body": b"Internal Server Error", "more_body": False}
        )

    async def send(self, message: Any) -> None:
        # uvicorn 0.55's, with the head built by `_start` and held for the first body part.
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        if not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(
                    f"Expected ASGI message 'http.response.start', but got '{message['type']}'."
                )
            headers = message.get("headers", ())
            self._begin(message["status"], headers, _lines(headers))
            return
        if self.response_complete:
            raise RuntimeError(
                f"Unexpected ASGI message '{message['type']}' sent, after response already "
                "completed."
            )
        if message["type"] != "http.response.body":
            raise RuntimeError(
                f"Expected ASGI message 'http.response.body', but got '{message['type']}'."
            )
        self._body(message.get("body", b""), message.get("more_body", False))

    def _begin(self, status: int, headers: Any, lines: bytes | None) -> None:
        """`send`'s start: the head made, and held for the first body part or written."""
        self.response_started = True
        self.waiting_for_100_continue = False
        head = self._start(status, headers, lines)
        if self._hold:
            self._head = head
        else:
            self.transport.write(head)

    def _body(self, body: bytes, more_body: bool) -> None:
        """`send`'s body part: framed and written (with a held head), and the response
        completed after the last."""
        if self._is_head:
            self.expected_content_length = 0
        elif self.chunked_encoding:
            if more_body:
                self._write(b"%x\r\n%s\r\n" % (len(body), body) if body else b"")
            else:
                self._write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else _LAST)
        else:
            if len(body) > self.expected_content_length:
                raise RuntimeError("Response content longer than Content-Length")
            self.expected_content_length -= len(body)
            self._write(body)
        if not more_body:
            if self.expected_content_length != 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self.message_event.set()
            if not self.keep_alive:
                self.transport.close()
            if self._protocol is not None:
                self._protocol.on_response_complete()

    def _start(self, status: int, headers: Any, lines: bytes | None) -> bytes:
        """The response's head (`lines`: `_lines(headers)`); sets the framing
        (`chunked_encoding`, the length expected) and `keep_alive` as uvicorn's `send`
        does."""
        protocol: BoundedHttpToolsProtocol = self._protocol  # type: ignore[assignment]  # set while the app runs (no cast(): a call)
        shared = protocol._shared
        if shared.access_log:
            scope = self.scope
            shared.access_logger.info(
                '%s - "%s %s HTTP/%s" %d',
                get_client_addr(scope),
                scope["method"],
                get_path_with_query_string(scope),
                scope["http_version"],
                status,
            )
        defaults = shared.defaults(protocol.server_state.default_headers)
        if defaults is None or lines is None:
            return self._uvicorn_head(status, headers)
        chunked = not self._is_head and status != 204 and status != 304
        if chunked:
            self.chunked_encoding = True
        return STATUS_LINE[status] + defaults + lines + _TAIL[self.keep_alive, chunked]

    def _uvicorn_head(self, status: int, headers: Any) -> bytes:
        """uvicorn 0.55's head, field by field, for what `_lines` does not pass."""
        content = [STATUS_LINE[status]]
        has_connection_close = False
        defaults = cast("BoundedHttpToolsProtocol", self._protocol).server_state.default_headers
        for name, value in defaults + list(headers):
            if HEADER_RE.search(name):
                raise RuntimeError("Invalid HTTP header name.")
            if HEADER_VALUE_RE.search(value):
                raise RuntimeError("Invalid HTTP header value.")
            name = name.lower()
            if name == b"content-length" and self.chunked_encoding is None:
                self.expected_content_length = int(value.decode())
                self.chunked_encoding = False
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self.expected_content_length = 0
                self.chunked_encoding = True
            elif name == b"connection":
                connection = [token.lower().strip() for token in value.split(b",")]
                if b"close" in connection:
                    self.keep_alive = False
                    has_connection_close = True
            content.extend([name, b": ", value, b"\r\n"])
        if not self.keep_alive and not has_connection_close:
            content.append(b"connection: close\r\n")
        if self.chunked_encoding is None and not self._is_head and status not in (204, 304):
            self.chunked_encoding = True
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        return b"".join(content)

    def _write(self, data: bytes) -> None:
        head = self._head
        if head is not None:
            self._head = None
            data = head + data
        self.transport.write(data)

    def _close(self) -> None:
        head, self._head = self._head, None
        if head is not None:
            self.transport.write(head)
        self.transport.close()

    def body_now(self) -> bytes | None:
        """The `BodyReader`: what `receive` hands over at once when the whole body is in
        (its one message's body), taken as `receive` takes it; None in every other case."""
        if (
            self.more_body
            or not self.message_event._value
            or self.waiting_for_100_continue
            or self.disconnected
            or self.response_complete
        ):
            return None
        self.flow.resume_reading()
        self.message_event._value = False
        body, self.body = self.body, b""
        return bytes(body)

    async def receive(self) -> Any:
        # uvicorn 0.55's, its usual case (the whole body in) by `body_now`.
        whole = self.body_now()
        if whole is not None:
            return {"type": "http.request", "body": whole, "more_body": False}
        if self.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.waiting_for_100_continue = False
        if not self.disconnected and not self.response_complete:
            self.flow.resume_reading()
            event = self.message_event
            if not event._value:  # the body is usually in by the time the app asks
                await event.wait()
            event._value = False
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        body, self.body = self.body, b""
        return {"type": "http.request", "body": bytes(body), "more_body": self.more_body}

    def write(self, data: bytes) -> bool:
        """The `BodyWriter`: a body part framed as `send` frames it (chunked encoding) and
        written at once, when `send` would write it at once."""
        if (
            not self.response_started
            or self.response_complete
            or not self.chunked_encoding
            or self.flow.write_paused
            or self.disconnected
        ):
            return False
        if data:  # an empty chunk would end the body
            try:
                framed = b"".join((_SIZE_LINES[len(data)], data, b"\r\n"))
            except IndexError:
                framed = b"%x\r\n%s\r\n" % (len(data), data)
            if self._head is None:
                self.transport.write(framed)
            else:
                self._write(framed)
        return True

    def start(self, status: int, headers: Any, data: bytes) -> bool:
        """The `BodyWriter`'s start: what `send` does for the response's start and its first
        body part (`data`, more to come), without the two messages and coroutines, when
        `send` would do it at once: the head held for the part and written with it. False,
        nothing done, when the caller must `send` them instead: the response started, the
        head would not be held (HEAD, `100 Continue`), the client's buffer is full, the
        client is gone, or the head needs uvicorn's field-by-field way."""
        if self.response_started or not self._hold or self.flow.write_paused or self.disconnected:
            return False
        lines = _lines(headers)
        if lines is None:
            return False
        self._begin(status, headers, lines)
        self._body(data, True)
        return True

    def end(self, data: bytes) -> bool:
        """The `BodyWriter`'s end: what `send` does for the last body part (`data`, may be
        empty), without the message and its coroutine, when `send` would do it at once.
        False, nothing done, when the caller must `send` it instead: the response has not
        started or is complete, the client's buffer is full, or the client is gone."""
        if (
            not self.response_started
            or self.response_complete
            or self.flow.write_paused
            or self.disconnected
        ):
            return False
        self._body(data, False)
        return True


_LAST = b"0\r\n\r\n"
_SIZE_LINES = [b"%x\r\n" % size for size in range(1024)]
"""The chunk-size lines of body parts under 1 KiB (a relayed event is usually 150-600
bytes): `write` frames a part by joining, at about 200 instructions less than formatting."""
