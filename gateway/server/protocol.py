"""The HTTP/1.1 protocol `gateway serve` runs: uvicorn's httptools one, with the gateway's
own request cycle and bounds llhttp does not have.

Bounds: a request's head (request line and header fields, trailers too) may take
`max_header_bytes`, one field or the target `MAX_LINE_BYTES`, and there may be
`MAX_HEADERS` fields; past a bound the client gets 431 (414 for the target) and the
connection closes, before the parser buffers more.

Each request's cycle is the gateway's own (`gateway.server.cycle`). This leans on uvicorn
0.5x's protocol internals, so it is imported only through the `gateway.server` package,
whose version guard runs first.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import urllib.parse
from collections.abc import Mapping
from operator import attrgetter
from typing import Any, cast

import httptools
import orjson
import uvicorn
from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.http.flow_control import (
    HIGH_WATER_LIMIT,
    service_unavailable,
)
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.server import ServerState

from gateway.asgi import BODY_READER, BODY_WRITER, DISCONNECT, STATE_KEY
from gateway.config import GatewayConfig
from gateway.runtime import Runtime
from gateway.server.cycle import _Cycle, _Flow, _KeepAlive, _lines

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
    slotted ones that keep their waiters in a list (`_ListEvent`; flow control's made only
    when writing first pauses), and its queue of pipelined requests by a list made for the
    first pipelined request (`_Pipeline`). Per server, not per connection: the loop (asking
    asyncio is a getpid() on 3.11), the keep-alive timer (`_KeepAlive`: one loop timer for
    all idle connections, not one armed and cancelled per response), and uvicorn's
    attributes that are alike for all connections (read through `_Shared`).

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
    _idle = False
    """Whether the connection waits for its next request, its keep-alive timeout armed on
    the server's timer (`_KeepAlive`; uvicorn's own `timeout_keep_alive_task` stays None)."""

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
        # loggers, whether the access log has a handler, the loaded app, the loop: asking
        # asyncio for it is a getpid() system call on Python 3.11) worked out once.
        shared = _Shared.of(config, server_state)
        self._shared = shared
        self.loop = _loop or shared.loop
        self.parser = parser = httptools.HttpRequestParser(self)
        if shared.lenient:
            # Answer the first of pipelined requests that came after a `connection: close`.
            parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self.app_state = app_state
        self.server_state = server_state
        self.connections = server_state.connections
        self.tasks = server_state.tasks
        # The rest of uvicorn's attributes: the server's as properties below, the
        # connection's defaults as class attributes (an attribute set per connection
        # costs about 60 ns here).

    # uvicorn's attributes that are the same for every connection of a server.
    config = property(attrgetter("_shared.config"))
    app = property(attrgetter("_shared.app"))
    logger = property(attrgetter("_shared.logger"))
    access_logger = property(attrgetter("_shared.access_logger"))
    access_log = property(attrgetter("_shared.access_log"))
    ws_protocol_class = property(attrgetter("_shared.config.ws_protocol_class"))
    root_path = property(attrgetter("_shared.root_path"))
    asgi_version = property(attrgetter("_shared.config.asgi_version"))
    limit_concurrency = property(attrgetter("_shared.limit_concurrency"))
    timeout_keep_alive = property(attrgetter("_shared.config.timeout_keep_alive"))
    # uvicorn's per-connection attributes, until set.
    timeout_keep_alive_task = None
    scope: Any = None
    headers: Any = None
    expect_100_continue = False
    cycle: Any = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # uvicorn 0.55's, with the addresses the transport noted when it connected: uvicorn
        # asks `get_extra_info("socket")` for them, which on uvloop builds a Python socket
        # per address (4 getsockname and 1 getpeername system calls per connection, and as
        # many socket objects made and detached); uvloop and asyncio keep both addresses.
        self.connections.add(self)
        self.transport = transport
        # (No `cast()`s on the request path here: each is a function call.)
        self.flow = _Flow(transport)  # type: ignore[assignment]  # FlowControl's duck
        self.server = _address(transport.get_extra_info("sockname"))
        peer = _address(transport.get_extra_info("peername"))
        self.client = (peer[0], peer[1]) if peer is not None and peer[1] is not None else None
        # uvicorn's `is_ssl`, asked only of a server that has TLS at all.
        tls = self._shared.tls and transport.get_extra_info("sslcontext")
        self.scheme = "https" if tls else "http"
        logger = self._shared.logger
        if logger.level <= TRACE_LOG_LEVEL:
            prefix = f"{self.client[0]}:{self.client[1]} - " if self.client else ""
            logger.log(TRACE_LOG_LEVEL, "%sHTTP connection made", prefix)
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
        if self._idle:
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
        value = value.rstrip(b" \t")  # llhttp keeps trailing whitespace (RFC 9110 5.5)
        if lower == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        headers.append((lower, value))

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
        # cycle is the gateway's own (`_Cycle`), which is also the scope's disconnect hook,
        # body writer and body reader.
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
            "root_path": shared.root_path,
            "headers": self.headers,
            "state": self.app_state.copy(),
            "method": _METHODS.get(method) or method.decode("ascii"),
            "path": target[0],
            "raw_path": target[1],
            "query_string": target[2],
            "extensions": {DISCONNECT: cycle, BODY_WRITER: cycle, BODY_READER: cycle},
        }
        cycle.scope = self.scope = scope
        limit = shared.limit_concurrency
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            app = service_unavailable
            self.logger.warning("Exceeded concurrency limit.")
        else:
            app = shared.app
            # The app's own POST routes (`GatewayApp.post_routes`), called directly: one
            # coroutine less per request, and one frame less on each of its resumptions.
            if method == b"POST" and shared.post_routes is not None:
                app = shared.post_routes.get(target[0], app)
        existing = self.cycle
        self.cycle = cycle
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
        cycle: _Cycle = self.cycle
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
        # uvicorn 0.55's (as 0.50's), with the keep-alive timeout on the server's timer (also
        # after a lost connection: uvicorn's timer would fire on a closed transport, which
        # does nothing), and the disconnect hook fired.
        self.connections.discard(self)
        logger = self._shared.logger
        if logger.level <= TRACE_LOG_LEVEL:
            prefix = f"{self.client[0]}:{self.client[1]} - " if self.client else ""
            logger.log(TRACE_LOG_LEVEL, "%sHTTP connection lost", prefix)
        cycle = self.cycle
        if cycle is not None:
            if not cycle.response_complete:
                cycle.disconnected = True
            cycle.message_event.set()
        if self.flow is not None:
            self.flow.resume_writing()
        if exc is None:
            self.transport.close()
        if self._idle:
            self._unset_keepalive_if_required()
        self.parser = None  # type: ignore[assignment]
        if cycle is not None and cycle.disconnected:
            cast(_Cycle, cycle).fire()

    def on_response_complete(self) -> None:
        # uvicorn 0.55's (as 0.50's), with the keep-alive timeout on the server's timer.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        if self._idle:
            self._unset_keepalive_if_required()
        self.flow.resume_reading()
        if self.pipeline:  # a pipelined request waits: start it
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self._idle = True
            self._shared.keep_alive.arm(self)

    def _unset_keepalive_if_required(self) -> None:
        if self._idle:
            self._idle = False
            self._shared.keep_alive.disarm(self)


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


_SEQUENCES = (tuple, list)  # made once: `tuple | list` would make a union per call


def _address(info: object) -> tuple[str, int | None] | None:
    """An address as uvicorn's scope has it (`server`, `client`): host and port of an IPv4
    or IPv6 socket address, a Unix socket's path with no port."""
    if type(info) is tuple and len(info) == 2 and type(info[0]) is str and type(info[1]) is int:
        return info  # an IPv4 address is already one (no str(), int() and tuple each)
    if isinstance(info, _SEQUENCES) and len(info) >= 2:
        return (str(info[0]), int(info[1]))
    if isinstance(info, str):
        return (info, None)
    return None


class _Pipeline(list[Any]):
    """uvicorn's queue of pipelined requests as a list: it only appends on the left, pops on
    the right and asks whether any wait. A deque takes 760 bytes even empty, for a queue
    that is empty on all but pipelining clients' connections."""

    __slots__ = ()

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


_METHODS = {m.encode(): m for m in ("GET", "POST", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS")}
"""The methods' `str`s, so that a request's is looked up rather than decoded."""

_TARGETS_KEPT = 256


class _Shared:
    """What every connection of one server has in common, worked out once (uvicorn's
    protocol does it per connection, or per request), kept on the server's state."""

    __slots__ = (
        "access_log",
        "access_logger",
        "app",
        "asgi",
        "config",
        "default_block",
        "default_headers",
        "fresh_context",
        "keep_alive",
        "lenient",
        "limit_concurrency",
        "logger",
        "loop",
        "post_routes",
        "root_path",
        "targets",
        "tls",
    )

    @classmethod
    def of(cls, config: uvicorn.Config, server_state: ServerState) -> _Shared:
        shared: _Shared | None = server_state.__dict__.get("_gateway_shared")
        # A server run again (a new loop) or handed another config starts afresh.
        if shared is None or shared.config is not config or shared.loop.is_closed():
            shared = server_state.__dict__["_gateway_shared"] = cls(config)
        return shared

    def __init__(self, config: uvicorn.Config) -> None:
        if not config.loaded:
            config.load()
        self.config = config
        self.app = config.loaded_app
        # An app that would hand POSTs to these paths straight to these ASGI apps says so
        # (`gateway.app.GatewayApp`); the server then calls them itself. Not when uvicorn
        # wrapped the app (a middleware of its own: it must see every request).
        self.post_routes: Mapping[str, Any] | None = getattr(self.app, "post_routes", None)
        # Made by the first connection, inside the server's running loop.
        self.loop = asyncio.get_event_loop()
        self.keep_alive = _KeepAlive(self.loop, config.timeout_keep_alive)
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
        self.limit_concurrency = config.limit_concurrency
        # Without an SSL context the server's transports are all plain TCP.
        self.tls = config.ssl is not None
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
            self.default_block = _lines(headers)
            self.default_headers = headers
        return self.default_block
