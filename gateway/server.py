"""Running the app under uvicorn, with a shutdown that lets answers finish.

uvicorn's own shutdown stops accepting connections at once. A rolling deploy wants more:
on SIGTERM (or the first Ctrl-C) the gateway keeps its socket open, answers `/readyz` with
503 and new API requests with 503 + `connection: close` (so load balancers move on), lets
open streams run to their end for up to `shutdown_grace` seconds, then ends the rest with
an SSE error event. Only then does uvicorn's shutdown run (the request log drains in the
app's lifespan) and the process exits 0. A second signal exits at once.

This is the one module that touches uvicorn's internals (its httptools protocol and response
cycle, its `_subprocess` for workers, its server's tick); importing it on a uvicorn outside
`gateway.versions.TESTED` raises `UntestedUvicorn`. Each patch has a test in
tests/test_server.py, and its cost or saving is in docs/performance.md.

The HTTP protocol is uvicorn's httptools one with bounds llhttp does not have: a request's
head (request line and header fields, trailers too) may take `max_header_bytes`, one field
or the target `MAX_LINE_BYTES`, and there may be `MAX_HEADERS` fields; past a bound the
client gets 431 (414 for the target) and the connection closes, before the parser buffers
more.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
import weakref
from multiprocessing.context import SpawnProcess
from types import FrameType
from typing import Any, cast

import httptools
import orjson
import uvicorn
from starlette.applications import Starlette
from uvicorn._subprocess import get_subprocess
from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import is_ssl

from gateway.asgi import BODY_WRITER, DISCONNECT, STATE_KEY, DisconnectHook, disconnect_hook
from gateway.config import GatewayConfig
from gateway.observability.metrics import mark_process_dead
from gateway.observability.requestlog import configure_process_logging
from gateway.runtime import Runtime
from gateway.versions import TESTED, check_tested_versions

_log = logging.getLogger("gateway.server")


class UntestedUvicorn(RuntimeError):
    """Raised on importing this module over a uvicorn outside the tested range."""


# Everything below leans on uvicorn's internals as the tested releases have them; on another
# release it would fail as a hung stream rather than an error, so importing this module
# refuses (`gateway serve` checks the same range first, with a log line; this guards any
# other way in, e.g. `bench.serve_variant`). `GATEWAY_ALLOW_UNTESTED=1` lets it through.
_guard = check_tested_versions(os.environ, tested={"uvicorn": TESTED["uvicorn"]})
if _guard.refuse:
    raise UntestedUvicorn(_guard.messages[0])


MAX_HEADERS = 100
"""Header fields in one request, trailers included (nginx and Node.js also stop at 100)."""
MAX_LINE_BYTES = 16 * 1024
"""One header field (name and value) or request target; nginx's default is 8 KiB, h11 and
Node.js allow 16 KiB for the whole head. Longer: 431, or 414 for the target."""
_NOT_IN_HEAD = -1
LISTEN_BACKLOG = 65535
"""The listen backlog asked for; Linux caps it at `net.core.somaxconn` (4096 by default
since 5.4): the kernel's own bound, which Go's net package asks for too. uvicorn's 2048
overflowed in a burst of 5,000 connections while the loop was busy setting requests up: the
kernel dropped the SYNs past it, and those clients waited for their retry a second or more
later (docs/performance.md, "Thousands of streams")."""


class _Refused(Exception):
    """Raised in a parser callback to stop llhttp where a bound was passed; the protocol's
    `_refusal` says what to answer."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol with the config's per-connection write high-water mark, a
    `DisconnectHook` in every request's scope that fires when the connection is lost before
    the response ended, each response's head sent together with its first body part, and
    bounded request heads.

    uvicorn's two events per connection (flow control, the request cycle's body) are
    replaced by ones that keep their waiters in a list (`_ListEvent`), and its queue of
    pipelined requests by a list (`_Pipeline`): 2.1 KB less for each open stream.

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

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # uvicorn 0.55's, with the addresses the transport noted when it connected: uvicorn
        # asks `get_extra_info("socket")` for them, which on uvloop builds a Python socket
        # per address (4 getsockname and 1 getpeername system calls per connection, and as
        # many socket objects made and detached); uvloop and asyncio keep both addresses.
        self.connections.add(self)
        self.transport = transport
        self.flow = _Flow(transport)
        self.server = _address(transport.get_extra_info("sockname"))
        peer = _address(transport.get_extra_info("peername"))
        self.client = (peer[0], peer[1]) if peer is not None and peer[1] is not None else None
        self.scheme = "https" if is_ssl(transport) else "http"
        if self.logger.level <= TRACE_LOG_LEVEL:
            prefix = f"{self.client[0]}:{self.client[1]} - " if self.client else ""
            self.logger.log(TRACE_LOG_LEVEL, "%sHTTP connection made", prefix)
        self.pipeline = cast(Any, _Pipeline())
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
        self._unset_keepalive_if_required()
        left = self._head_left
        if left == _NOT_IN_HEAD or len(data) <= left:
            if left != _NOT_IN_HEAD:
                self._head_left = left - len(data)
            self._feed(data)
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
            refusal = self._refusal
            if refusal is not None:
                self._refuse(*refusal)
                return False
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return False
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return False
        return True

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
        super().on_message_begin()
        scope: Any = self.scope  # uvicorn's TypedDict types extensions' values narrowly
        # uvicorn 0.55's scope has no extensions; any a later one adds (e.g. "tls") are kept.
        scope.setdefault("extensions", {})[DISCONNECT] = DisconnectHook()

    def on_header(self, name: bytes, value: bytes) -> None:
        # uvicorn 0.55's, with the count: calling it would cost a call per field, a third of
        # what the bounds cost a request (tests/test_server.py checks what it does).
        headers = self.headers
        if len(headers) >= MAX_HEADERS:
            self._stop(431, f"the request has more than {MAX_HEADERS} header fields")
        name = name.lower()
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
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is None:
            return
        cycle.message_event = _light_event(cycle.message_event)
        # Not when the client waits for `100 Continue` (that must leave on its own), nor for
        # HEAD (its answer has no body part to carry the head).
        if not self.expect_100_continue and self.scope["method"] != "HEAD":
            cycle.transport = cast(asyncio.Transport, _HeadWithBody(cycle, self.transport))
        scope: Any = self.scope
        scope["extensions"][BODY_WRITER] = _ChunkWriter(cycle)

    def on_body(self, body: bytes) -> None:
        self._head_left = _NOT_IN_HEAD
        super().on_body(body)

    def on_chunk_header(self) -> None:
        # After the last chunk come the trailers, header fields llhttp hands over as the head's
        # are (a chunk's data turns counting off again).
        self._head_left = self._max_head

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._head_left = self._max_head

    def connection_lost(self, exc: Exception | None) -> None:
        cycle = self.cycle
        super().connection_lost(exc)
        if cycle is not None and cycle.disconnected:
            hook = disconnect_hook(cast(Any, cycle.scope))
            if hook is not None:
                hook.fire()


def _address(info: object) -> tuple[str, int | None] | None:
    """An address as uvicorn's scope has it (`server`, `client`): host and port of an IPv4
    or IPv6 socket address, a Unix socket's path with no port."""
    if isinstance(info, tuple | list) and len(info) >= 2:
        return (str(info[0]), int(info[1]))
    if isinstance(info, str):
        return (info, None)
    return None


class _ListEvent(asyncio.Event):
    """`asyncio.Event` with its waiters in a list. asyncio's keeps them in a deque, which
    takes 760 bytes even empty (a list: 56); uvicorn holds two per connection (its flow
    control's and the request cycle's) for as long as a stream is open, and has at most one
    waiter on either. `wait` appends and removes, `set` iterates: a list does both."""

    def __init__(self) -> None:
        super().__init__()
        self._waiters = []  # type: ignore[assignment]


class _Flow(FlowControl):
    """uvicorn's flow control with its event a `_ListEvent` from the start (uvicorn's makes
    an `asyncio.Event` that would be replaced at once)."""

    def __init__(self, transport: asyncio.Transport) -> None:  # uvicorn 0.55's, but the event
        self._transport = transport
        self.read_paused = False
        self.write_paused = False
        self._is_writable_event = _ListEvent()
        self._is_writable_event.set()


class _Pipeline(list[Any]):
    """uvicorn's queue of pipelined requests as a list: it only appends on the left, pops on
    the right and asks whether any wait. A deque takes 760 bytes even empty, for a queue
    that is empty on all but pipelining clients' connections."""

    __slots__ = ()

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


def _light_event(event: asyncio.Event) -> asyncio.Event:
    """A `_ListEvent` in the state of `event`, which nothing waits on yet."""
    light = _ListEvent()
    if event.is_set():
        light.set()
    return light


class _HeadWithBody:
    """A response cycle's transport until its first body part: uvicorn writes the status
    line and headers on `http.response.start`, this holds them and writes them with the
    next write (the first body part), one syscall and one packet instead of two. Then the
    cycle gets the real transport back, so later parts pay nothing for it. (A relayed
    stream's head and first event are sent back to back; so are plain answers'.)

    It holds the cycle by a weak reference, as `_ChunkWriter` does and for the same reason:
    a client gone before the first body part would otherwise leave the cycle and this in a
    reference cycle for the collector."""

    __slots__ = ("_cycle", "_head", "_transport")

    def __init__(self, cycle: RequestResponseCycle, transport: asyncio.Transport) -> None:
        self._cycle = weakref.ref(cycle)
        self._transport = transport
        self._head: bytes | None = None

    def _give_back(self) -> None:
        cycle = self._cycle()
        if cycle is not None:
            cycle.transport = self._transport

    def write(self, data: bytes) -> None:
        if self._head is None:
            self._head = data
            return
        self._give_back()
        self._transport.write(self._head + data)

    def close(self) -> None:
        self._give_back()
        if self._head is not None:
            self._transport.write(self._head)
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()


class _ChunkWriter:
    """The `BodyWriter` of one response: a body part framed as uvicorn frames it (chunked
    encoding) and written to the transport, when uvicorn's `send` would write it at once.

    It holds its cycle by a weak reference: the cycle's scope holds the writer, and a strong
    reference back made every request a reference cycle (the cycle, its scope, flow control,
    events, transport: about 26 objects) that outlived its connection until a full
    collection, which under load comes seldom: after a burst of 3,000 streams 78,000 such
    objects were still waiting, and a next burst's memory could come on top of them, and
    the collector spent 12-18 µs per request on them. While the app runs, its task holds
    the cycle, so the reference always resolves."""

    __slots__ = ("_cycle",)

    def __init__(self, cycle: RequestResponseCycle) -> None:
        self._cycle = weakref.ref(cycle)

    def write(self, data: bytes) -> bool:
        cycle = self._cycle()
        if (
            cycle is None
            or not cycle.response_started
            or cycle.response_complete
            or not cycle.chunked_encoding
            or cycle.flow.write_paused
            or cycle.disconnected
        ):
            return False
        if data:  # an empty chunk would end the body
            cycle.transport.write(b"%x\r\n%s\r\n" % (len(data), data))
        return True


class GatewayServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._drain_since: float | None = None
        self._signals = 0

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # What exists now (app, config, clients) lives as long as the process: freeze it out
        # of the collector's scans, and let the young generation grow before a collection,
        # since every relayed event allocates a few short-lived objects. The older
        # generations keep short intervals: cancelled streams leave reference cycles, and
        # `bench.soak` showed RSS creeping for minutes with rarer full collections.
        gc.freeze()
        gc.set_threshold(20_000, 10, 10)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # One stop can arrive twice: Ctrl-C or systemd signal the whole process group, and
        # the supervisor forwards its copy too. Only a signal after the first second forces.
        if self._drain_since is not None and time.monotonic() - self._drain_since < 1.0:
            return
        self._signals += 1
        if self._signals > 1:
            self.force_exit = True
            self.should_exit = True
            return
        self._drain_since = time.monotonic()

    async def on_tick(self, counter: int) -> bool:
        should_exit = await super().on_tick(counter)
        if self._drain_since is None or should_exit:
            return should_exit
        state: Runtime | None = self.lifespan.state.get(STATE_KEY)
        if state is None:
            self.should_exit = True
            return True
        if not state.draining:
            state.draining = True
            _log.info("worker %d draining: %d open request(s)", os.getpid(), len(state.watches))
        waited = time.monotonic() - self._drain_since
        if waited >= state.config.shutdown_grace:
            for watch in list(state.watches):
                watch.end("shutdown")
        if not self.server_state.tasks or waited >= state.config.shutdown_grace + 5:
            self.should_exit = True
            return True
        return False


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything says it listens: a busy port is an
    OSError here, not a banner followed by uvicorn's exit. (uvicorn's `Config.bind_socket`,
    minus its logging and its `sys.exit`.)"""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)  # the workers get it
    return sock


def serve(app: Starlette | str, *, sock: socket.socket, workers: int, grace: float) -> None:
    """Serve on `sock` (from `bind`) until stopped; `app` is an import string when
    `workers` > 1 (each worker builds its own)."""
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        workers=workers,
        factory=isinstance(app, str),
        access_log=False,
        # Its loggers propagate to the root's one handler (`configure_process_logging`)
        # rather than getting uvicorn's own console handlers.
        log_config=None,
        log_level=os.environ.get("GATEWAY_UVICORN_LOG_LEVEL", "warning"),
        timeout_keep_alive=75,
        backlog=LISTEN_BACKLOG,
        timeout_graceful_shutdown=int(grace) + 10,
        lifespan="on",
        http=BoundedHttpToolsProtocol,
        # The gateway reads no client address; uvicorn's X-Forwarded-For middleware would
        # only add a layer to every request.
        proxy_headers=False,
    )
    if workers > 1:
        sys.exit(_supervise(config, sock, workers))
    GatewayServer(config).run(sockets=[sock])


def _run_worker(config: uvicorn.Config, sockets: list[socket.socket]) -> None:
    """A worker process's life: the same logging pipeline as its parent's, then serving."""
    configure_process_logging()
    GatewayServer(config).run(sockets=sockets)


def _supervise(config: uvicorn.Config, sock: socket.socket, workers: int) -> int:
    """Run `workers` processes on one listening socket; pass SIGTERM/SIGINT on to them.

    uvicorn's own supervisor builds plain `uvicorn.Server`s in its workers, which would lose
    the draining shutdown above; this one is small enough to own. A worker that dies
    unexpectedly is replaced. Each dead worker is marked dead in the metrics directory, so
    the streams it had open leave `gateway_active_streams` (a SIGKILLed worker never runs
    its own `Metrics.close`).
    """
    stopping = threading.Event()
    target = functools.partial(_run_worker, config)

    def start() -> SpawnProcess:
        process = get_subprocess(config, target=target, sockets=[sock])
        process.start()
        return process

    processes = [start() for _ in range(workers)]
    forwarded: set[int] = set()

    def forward(sig: int, frame: FrameType | None) -> None:
        stopping.set()
        forwarded.add(sig)
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, sig)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    while not stopping.wait(0.5):
        for i, process in enumerate(processes):
            if not process.is_alive() and not stopping.is_set():
                _log.warning("worker %s exited (%s); restarting", process.pid, process.exitcode)
                if process.pid is not None:
                    mark_process_dead(process.pid)
                processes[i] = start()
    for process in processes:
        process.join()
        if process.pid is not None:
            mark_process_dead(process.pid)
    sock.close()
    # A worker still starting up when the stop came dies of the signal itself (-SIGTERM):
    # it served nothing, so that is a clean stop too.
    clean = {0, None, *(-sig for sig in forwarded)}
    return max((abs(p.exitcode or 0) for p in processes if p.exitcode not in clean), default=0)
