"""The HTTP/1.1 protocol `gateway serve` runs: uvicorn's httptools one, with the gateway's
own request cycle and bounds llhttp does not have.

Bounds: a request's head (request line and header fields, trailers too) may take
`max_header_bytes`, one field or the target `MAX_LINE_BYTES`, and there may be
`MAX_HEADERS` fields; past a bound the client gets 431 (414 for the target) and the
connection closes, before the parser buffers more.

The cycle (`_Cycle`) replaces uvicorn's `RequestResponseCycle`: one object per request that
is also the scope's disconnect hook and body writer, its response head built and checked in
one pass (uvicorn's field-by-field checks are the fallback for anything unusual, with the
same errors). It leans on uvicorn 0.5x's protocol internals, so it is imported only through
the `gateway.server` package, whose version guard runs first.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import urllib.parse
from typing import Any, cast

import httptools
import orjson
import uvicorn
from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.http.flow_control import (
    HIGH_WATER_LIMIT,
    FlowControl,
    service_unavailable,
)
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string
from uvicorn.server import ServerState

from gateway.asgi import BODY_WRITER, DISCONNECT, STATE_KEY, DisconnectHook
from gateway.config import GatewayConfig
from gateway.runtime import Runtime

MAX_HEADERS = 100
"""Header fields in one request, trailers included (nginx and Node.js also stop at 100)."""
MAX_LINE_BYTES = 16 * 1024
"""One header field (name and value) or request target; nginx's default is 8 KiB, h11 and
Node.js allow 16 KiB for the whole head. Longer: 431, or 414 for the target."""
_NOT_IN_HEAD = -1


class _Refused(Exception):
    """Raised in a parser callback to stop llhttp where a bound was passed; the protocol's
    `_refusal` says what to answer."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol with the config's per-connection write high-water mark, a
    `DisconnectHook` in every request's scope that fires when the connection is lost before
    the response ended, each response's head sent together with its first body part, and
    bounded request heads.

    Its request cycle is the gateway's own (`_Cycle`: uvicorn's, leaner), and so are the
    parts of uvicorn's protocol that run per connection and per request (the scope in one
    dict, what is the same for every connection worked out once: `_Shared`), since uvicorn
    took about 70 µs of CPU per request in all (docs/performance.md, "Round 3"). uvicorn's
    two events per connection (flow control, the request cycle's body) are replaced by
    slotted ones that keep their waiters in a list (`_ListEvent`), and its queue of
    pipelined requests by a list made for the first pipelined request (`_Pipeline`).

    uvicorn pauses an ASGI `send()` while the transport's buffer is over its high-water mark;
    the relay awaits that send before reading the upstream again, so this number bounds what
    a slow client can make the gateway hold (plus one upstream read), and the upstream feels
    the backpressure through TCP.

    Heads: llhttp hands header names and values over in pieces and httptools joins them
    (`bytes +=`) until the field ends, so one endless field costs memory and quadratic CPU.
    `_head_left` counts down the bytes the current head may still take, per socket read,
    and the parser is never fed past it: a read that would pass it is fed up to the bound
    only, and if the head is still not complete there, the client gets 431. Counting is off
    (`_NOT_IN_HEAD`) while a body arrives, and on again after the message ends and at each
    chunk header of a chunked body (for the trailers after the last one). The bytes of a
    pipelined request that came in the same read as the end of the request before it are not
    counted: at most one read (256 KiB) more. Field count and length are checked as fields
    end; a field can be longer than `MAX_LINE_BYTES` only if the head's reads are, so the
    length check runs only then.
    """

    _max_head = GatewayConfig.max_header_bytes
    _head_left = GatewayConfig.max_header_bytes
    _refusal: tuple[int, str] | None = None

    pipeline: Any = ()
    """uvicorn's queue of pipelined requests: a `_Pipeline` from the first one on (most
    connections never have one)."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        # uvicorn 0.55's, with what is the same for every connection of a server (its
        # loggers, whether the access log has a handler, the loaded app) worked out once.
        shared = _Shared.of(config)
        self._shared = shared
        self.config = config
        self.app = shared.app
        self.loop = _loop or asyncio.get_event_loop()
        self.logger = shared.logger
        self.access_logger = shared.access_logger
        self.access_log = shared.access_log
        self.parser = parser = httptools.HttpRequestParser(self)
        if shared.lenient:
            # Answer the first of pipelined requests that came after a `connection: close`.
            parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self.ws_protocol_class = config.ws_protocol_class
        self.root_path = config.root_path
        self.asgi_version = config.asgi_version
        self.limit_concurrency = config.limit_concurrency
        self.app_state = app_state
        self.timeout_keep_alive_task = None
        self.timeout_keep_alive = config.timeout_keep_alive
        self.server_state = server_state
        self.connections = server_state.connections
        self.tasks = server_state.tasks
        self.scope = cast(Any, None)
        self.headers = cast(Any, None)
        self.expect_100_continue = False
        self.cycle = cast(Any, None)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # uvicorn 0.55's, with the addresses the transport noted when it connected: uvicorn
        # asks `get_extra_info("socket")` for them, which on uvloop builds a Python socket
        # per address (4 getsockname and 1 getpeername system calls per connection, and as
        # many socket objects made and detached); uvloop and asyncio keep both addresses.
        self.connections.add(self)
        self.transport = transport
        self.flow = cast(FlowControl, _Flow(transport))
        self.server = _address(transport.get_extra_info("sockname"))
        peer = _address(transport.get_extra_info("peername"))
        self.client = (peer[0], peer[1]) if peer is not None and peer[1] is not None else None
        self.scheme = "https" if transport.get_extra_info("sslcontext") else "http"  # is_ssl
        if self.logger.level <= TRACE_LOG_LEVEL:
            prefix = f"{self.client[0]}:{self.client[1]} - " if self.client else ""
            self.logger.log(TRACE_LOG_LEVEL, "%sHTTP connection made", prefix)
        # The app's lifespan state (uvicorn hands it to every protocol): without a gateway
        # there, no high-water mark and the default head bound.
        runtime: Runtime | None = self.app_state.get(STATE_KEY)
        if runtime is None:
            return
        self._max_head = self._head_left = runtime.config.max_header_bytes
        high = runtime.config.stream_buffer_bytes
        if high:
            transport.set_write_buffer_limits(high=high, low=high // 4)

    def data_received(self, data: bytes) -> None:
        # uvicorn's, with the head bound: see the class docstring.
        if self.timeout_keep_alive_task is not None:
            self._unset_keepalive_if_required()
        left = self._head_left
        if left == _NOT_IN_HEAD or len(data) <= left:
            if left != _NOT_IN_HEAD:
                self._head_left = left - len(data)
            try:  # `_feed`'s, inline: a request's head and body usually come in one read
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                self._unparsable()
            except httptools.HttpParserUpgrade:
                self._upgrade()
        else:
            self._feed_bounded(memoryview(data))

    def _feed_bounded(self, view: memoryview) -> None:
        """A read longer than what the head may still take: fed up to the bound, then, if the
        head ended within it, the rest (which may hold the next head: it is counted too)."""
        while view:
            left = self._head_left
            if left == _NOT_IN_HEAD or len(view) <= left:
                if left != _NOT_IN_HEAD:
                    self._head_left = left - len(view)
                self._feed(view)
                return
            self._head_left = 0
            if not self._feed(view[:left]):
                return
            if self._head_left == 0:  # nothing ended the head within the bound
                self._refuse(431, f"the request's head is over {self._max_head} bytes")
                return
            view = view[left:]

    def _feed(self, data: bytes | memoryview) -> bool:
        """uvicorn's `data_received` minus the keep-alive timer; False once the connection
        is done with (an error answered, or an upgrade)."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._unparsable()
            return False
        except httptools.HttpParserUpgrade:
            self._upgrade()
            return False
        return True

    def _unparsable(self) -> None:
        refusal = self._refusal
        if refusal is not None:
            self._refuse(*refusal)
            return
        msg = "Invalid HTTP request received."
        self.logger.warning(msg)
        self.send_400_response(msg)

    def _upgrade(self) -> None:
        if self._should_upgrade():
            self.handle_websocket_upgrade()
        else:
            self._unsupported_upgrade_warning()

    def _refuse(self, status: int, message: str) -> None:
        """Answer a head that passed a bound and close the connection. While an answer to an
        earlier request is being written (a pipelined head), there is no place for this one:
        the connection just closes, and the earlier request sees a disconnect."""
        self._refusal = None
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            code = "request_header_fields_too_large" if status == 431 else "request_uri_too_long"
            error = {"message": message, "type": "invalid_request_error", "param": None}
            body = orjson.dumps({"error": {**error, "code": code}})
            head = b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body)
            self.transport.write(STATUS_LINE[status] + head + b"connection: close\r\n\r\n" + body)
        self.transport.close()

    def _stop(self, status: int, message: str) -> None:
        self._refusal = (status, message)
        raise _Refused(message)

    def on_message_begin(self) -> None:
        # uvicorn's builds the scope here and fills it in as the head ends; the scope is
        # built whole, in one dict, in `on_headers_complete`.
        self.url = b""
        self.expect_100_continue = False
        self.headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        # uvicorn 0.55's, with the count: calling it would cost a call per field, a third of
        # what the bounds cost a request (tests/test_server.py checks what it does).
        headers = self.headers
        if len(headers) >= MAX_HEADERS:
            self._stop(431, f"the request has more than {MAX_HEADERS} header fields")
        lower = _NAMES.get(name)
        if lower is None:
            lower = _learn_name(name)
        name = lower
        value = value.rstrip(b" \t")  # llhttp keeps trailing whitespace (RFC 9110 5.5)
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        # `_head_left` counted every byte fed in this head (and maybe a body part): a field
        # longer than MAX_LINE_BYTES needs more than that many.
        if self._max_head - self._head_left > MAX_LINE_BYTES:
            if len(self.url) > MAX_LINE_BYTES:
                self._stop(414, f"the request target is over {MAX_LINE_BYTES} bytes")
            for name, value in self.headers:
                if len(name) + len(value) > MAX_LINE_BYTES:
                    self._stop(431, f"a header field is over {MAX_LINE_BYTES} bytes")
        self._head_left = _NOT_IN_HEAD
        # uvicorn 0.55's, but the scope is one dict (its `asgi` part shared, the target's
        # parse remembered per target, as a few targets take all the requests) and the
        # cycle is the gateway's own (`_Cycle`), which is also the scope's disconnect hook
        # and body writer.
        shared = self._shared
        parser = self.parser
        http_version = parser.get_http_version()
        method = parser.get_method()
        if parser.should_upgrade() and self._should_upgrade():
            # What uvicorn's scope has by then, for `handle_websocket_upgrade`.
            self.scope = cast(Any, {"method": method.decode("ascii"), "headers": self.headers})
            return
        target = shared.targets.get(self.url)
        if target is None:
            target = shared.target(self.url)
        keep_alive = http_version != "1.0" and parser.should_keep_alive()
        cycle = _Cycle(self, keep_alive, self.expect_100_continue, method == b"HEAD")
        # Any: uvicorn's TypedDict types the extensions' values (and `asgi`) narrowly.
        scope: Any = {
            "type": "http",
            "asgi": shared.asgi,
            "http_version": http_version,
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "root_path": self.root_path,
            "headers": self.headers,
            "state": self.app_state.copy(),
            "method": _METHODS.get(method) or method.decode("ascii"),
            "path": target[0],
            "raw_path": target[1],
            "query_string": target[2],
            "extensions": {DISCONNECT: cycle, BODY_WRITER: cycle},
        }
        cycle.scope = self.scope = scope
        if self.limit_concurrency is not None and (
            len(self.connections) >= self.limit_concurrency
            or len(self.tasks) >= self.limit_concurrency
        ):
            app = service_unavailable
            self.logger.warning("Exceeded concurrency limit.")
        else:
            app = self.app
        existing = self.cycle
        self.cycle = cast(RequestResponseCycle, cycle)
        if existing is None or existing.response_complete:  # `_start_asgi_task`, inline
            if shared.fresh_context:
                task = self.loop.create_task(cycle.run_asgi(app), context=contextvars.Context())
            else:
                task = self.loop.create_task(cycle.run_asgi(app))
            task.add_done_callback(self.tasks.discard)
            self.tasks.add(task)
        else:  # a pipelined request waits for the answers before it
            self.flow.pause_reading()
            if not self.pipeline:
                self.pipeline = cast(Any, _Pipeline())
            self.pipeline.appendleft((cycle, app))

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        # uvicorn 0.55's, with its config's contextvars choice read once per server.
        if self._shared.fresh_context:
            task = self.loop.create_task(cycle.run_asgi(app), context=contextvars.Context())
        else:
            task = self.loop.create_task(cycle.run_asgi(app))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def on_body(self, body: bytes) -> None:
        # uvicorn 0.55's, with the head bound's switch.
        self._head_left = _NOT_IN_HEAD
        cycle: _Cycle = self.cycle  # type: ignore[assignment]
        if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
            return
        # The usual body is one part: kept as it came, which `receive` hands on uncopied.
        so_far = cycle.body
        if not so_far:
            cycle.body = so_far = body
        else:
            if type(so_far) is bytes:
                cycle.body = so_far = bytearray(so_far)
            so_far += body
        if len(so_far) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()

    def on_chunk_header(self) -> None:
        # After the last chunk come the trailers, header fields llhttp hands over as the head's
        # are (a chunk's data turns counting off again).
        self._head_left = self._max_head

    def on_message_complete(self) -> None:
        # uvicorn 0.55's, with the head bound's switch.
        self._head_left = self._max_head
        cycle = self.cycle
        if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
            return
        cycle.more_body = False
        cycle.message_event.set()

    def connection_lost(self, exc: Exception | None) -> None:
        cycle = self.cycle
        super().connection_lost(exc)
        if cycle is not None and cycle.disconnected:
            cast(_Cycle, cycle).fire()


_NAMES: dict[bytes, bytes] = {}
"""Header names as clients spell them, to the lower-case name: one shared `bytes` per
name instead of a new one per field of every request (each open stream keeps its
request's fields), and no `lower()`."""
_NAMES_KEPT = 1024
_KEPT_BYTES = 64
"""The longest header name or request target remembered (`_NAMES`, `_Shared.targets`):
the remembered ones take at most 1024 x 64 and 256 x 64 bytes, whatever clients send."""


def _learn_name(name: bytes) -> bytes:
    lower = name.lower()
    # Past the bounds, new spellings are lowered each time.
    if len(_NAMES) < _NAMES_KEPT and len(name) <= _KEPT_BYTES:
        lower = _NAMES.setdefault(lower, lower)
        _NAMES[name] = lower
    return lower


def _address(info: object) -> tuple[str, int | None] | None:
    """An address as uvicorn's scope has it (`server`, `client`): host and port of an IPv4
    or IPv6 socket address, a Unix socket's path with no port."""
    if isinstance(info, tuple | list) and len(info) >= 2:
        return (str(info[0]), int(info[1]))
    if isinstance(info, str):
        return (info, None)
    return None


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
    """uvicorn's `FlowControl` (0.55's, as 0.50's), in slots and with a `_ListEvent`."""

    __slots__ = ("_is_writable_event", "_transport", "read_paused", "write_paused")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.read_paused = False
        self.write_paused = False
        self._is_writable_event = _ListEvent()
        self._is_writable_event._value = True

    async def drain(self) -> None:
        await self._is_writable_event.wait()

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
            self._is_writable_event.clear()

    def resume_writing(self) -> None:
        if self.write_paused:
            self.write_paused = False
            self._is_writable_event.set()


class _Pipeline(list[Any]):
    """uvicorn's queue of pipelined requests as a list: it only appends on the left, pops on
    the right and asks whether any wait. A deque takes 760 bytes even empty, for a queue
    that is empty on all but pipelining clients' connections."""

    __slots__ = ()

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


_METHODS = {m.encode(): m for m in ("GET", "POST", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS")}
"""The methods' `str`s, so that a request's is looked up rather than decoded."""

_HEAD_OK = re.compile(
    rb"(?:(?!content-length:|transfer-encoding:|connection:)"
    rb'[^\x00-\x1f\x7f()<>@,;:\[\]={} \t\\"A-Z]*: [^\x00-\x08\x0a-\x1f\x7f]*\r\n)*'
)
"""Header lines (`name: value\r\n`) that need nothing of uvicorn's per-field work: each
name lower-case and without the characters uvicorn refuses in a name, each value without
the control characters it refuses in a value (so no CR, LF or NUL: no header injection),
and none of the three fields that change the framing. One match over a head's lines
(with a count of its LFs: `_checked`) instead of two regex searches and a `lower()` per
field; a head that does not pass takes uvicorn's way (`_Cycle._uvicorn_head`), which also
raises its errors."""


def _checked(lines: bytes, fields: int) -> bool:
    """Whether `lines`, `fields` header fields joined as head lines, pass `_HEAD_OK` as
    those fields: one LF per field, so that no name or value brought a line of its own
    (`_HEAD_OK` sees only lines)."""
    return lines.count(b"\n") == fields and _HEAD_OK.fullmatch(lines) is not None


_TAIL = {
    (True, False): b"\r\n",
    (True, True): b"transfer-encoding: chunked\r\n\r\n",
    (False, False): b"connection: close\r\n\r\n",
    (False, True): b"connection: close\r\ntransfer-encoding: chunked\r\n\r\n",
}
"""A checked head's end, by (keep-alive, chunked)."""

_TARGETS_KEPT = 256


class _Shared:
    """What every connection of one server has in common, worked out once (uvicorn's
    protocol does it per connection, or per request)."""

    __slots__ = (
        "access_log",
        "access_logger",
        "app",
        "asgi",
        "default_block",
        "default_headers",
        "fresh_context",
        "lenient",
        "logger",
        "root_path",
        "targets",
    )

    @classmethod
    def of(cls, config: uvicorn.Config) -> _Shared:
        shared: _Shared | None = config.__dict__.get("_gateway_shared")
        if shared is None:
            shared = config.__dict__["_gateway_shared"] = cls(config)
        return shared

    def __init__(self, config: uvicorn.Config) -> None:
        if not config.loaded:
            config.load()
        self.app = config.loaded_app
        self.logger = logging.getLogger("uvicorn.error")
        self.access_logger = logging.getLogger("uvicorn.access")
        # uvicorn asks per connection; a handler added to it while serving is not seen.
        self.access_log = self.access_logger.hasHandlers()
        self.asgi = {"version": config.asgi_version, "spec_version": "2.3"}
        # uvicorn 0.55 makes each request's task a fresh context only when told to; 0.50
        # always did.
        self.fresh_context = getattr(config, "reset_contextvars", True)
        self.lenient = hasattr(httptools.HttpRequestParser, "set_dangerous_leniencies")
        self.root_path = config.root_path
        self.targets: dict[bytes, tuple[str, bytes, bytes]] = {}
        self.default_headers: list[tuple[bytes, bytes]] | None = None
        self.default_block: bytes | None = b""

    def target(self, url: bytes) -> tuple[str, bytes, bytes]:
        """A request target's path, raw path and query as uvicorn's scope has them (its
        parse raises on a target it cannot parse), remembered for the next request."""
        parsed = httptools.parse_url(url)
        raw_path = parsed.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        root = self.root_path
        target = (root + path, root.encode("ascii") + raw_path, parsed.query or b"")
        if len(url) <= _KEPT_BYTES:
            if len(self.targets) >= _TARGETS_KEPT:
                self.targets.clear()  # many distinct targets: the small routes' queries
            self.targets[url] = target
        return target

    def defaults(self, headers: list[tuple[bytes, bytes]]) -> bytes | None:
        """uvicorn's default headers (`date`, `server`; renewed each second) as head lines,
        or None when they need uvicorn's way."""
        if headers is not self.default_headers:
            block = b"".join([b"%s: %s\r\n" % (name, value) for name, value in headers])
            self.default_block = block if _checked(block, len(headers)) else None
            self.default_headers = headers
        return self.default_block


class _Cycle(DisconnectHook):
    """One request and its response: uvicorn 0.55's `RequestResponseCycle` with the same
    attributes its protocol and server read, in slots, and besides:

    - the response's head built in one piece (`_HEAD_OK`);
    - the head held until the first body part and written with it, one write and one
      packet instead of two (not for HEAD, whose answer has no body part, nor after
      `100 Continue`, which must be followed by the head on its own);
    - the scope's `DisconnectHook` (`fire`, from `connection_lost`) and `BodyWriter`
      (`write`): no objects of their own.
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
        # uvicorn 0.55's (a held head is written before the connection closes).
        logger = cast(BoundedHttpToolsProtocol, self._protocol).logger
        try:
            result = await app(self.scope, self.receive, self.send)
        except BaseException as exc:
            logger.error("Exception in ASGI application\n", exc_info=exc)
            if not self.response_started:
                await self.send_500_response()
            else:
                self._close()
        else:
            if result is not None:
                logger.error("ASGI callable should return None, but returned '%s'.", result)
                self._close()
            elif not self.response_started and not self.disconnected:
                logger.error("ASGI callable returned without starting response.")
                await self.send_500_response()
            elif not self.response_complete and not self.disconnected:
                logger.error("ASGI callable returned without completing response.")
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
            self.response_started = True
            self.waiting_for_100_continue = False
            head = self._start(message["status"], message.get("headers", ()))
            if self._hold:
                self._head = head
            else:
                self.transport.write(head)
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
        body = message.get("body", b"")
        more_body = message.get("more_body", False)
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

    def _start(self, status: int, headers: Any) -> bytes:
        """The response's head; sets the framing (`chunked_encoding`, the length expected)
        and `keep_alive` as uvicorn's `send` does."""
        protocol = cast(BoundedHttpToolsProtocol, self._protocol)  # while the app runs
        if protocol.access_log:
            scope = self.scope
            protocol.access_logger.info(
                '%s - "%s %s HTTP/%s" %d',
                get_client_addr(scope),
                scope["method"],
                get_path_with_query_string(scope),
                scope["http_version"],
                status,
            )
        defaults = protocol._shared.defaults(protocol.server_state.default_headers)
        fields = [b"%s: %s\r\n" % (name, value) for name, value in headers]
        lines = b"".join(fields)
        if defaults is None or not _checked(lines, len(fields)):
            return self._uvicorn_head(status, headers)
        chunked = not self._is_head and status != 204 and status != 304
        if chunked:
            self.chunked_encoding = True
        return STATUS_LINE[status] + defaults + lines + _TAIL[self.keep_alive, chunked]

    def _uvicorn_head(self, status: int, headers: Any) -> bytes:
        """uvicorn 0.55's head, field by field, for what `_HEAD_OK` does not pass."""
        content = [STATUS_LINE[status]]
        has_connection_close = False
        defaults = cast(BoundedHttpToolsProtocol, self._protocol).server_state.default_headers
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

    async def receive(self) -> Any:
        # uvicorn 0.55's.
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
            if self._head is None:
                self.transport.write(b"%x\r\n%s\r\n" % (len(data), data))
            else:
                self._write(b"%x\r\n%s\r\n" % (len(data), data))
        return True


_LAST = b"0\r\n\r\n"
