"""`gateway serve`'s HTTP protocol (uvicorn's, with the gateway's additions), driven with a
transport that records each write (a response's head leaves with its first body part, in one
write, except where it must leave on its own), and on a real socket under uvicorn's server.

Where each of `gateway.server`'s patches to uvicorn is tested:
- the gateway's own request cycle (`_Cycle`), byte for byte against uvicorn's: here;
- the head held for the first body part (`_Cycle`): here, recorded and on a socket;
- the direct body writer (`_Cycle.write`): here, recorded and on a socket; its `start` and
  `end` byte for byte against the sends, here (and on every stream through the real
  gateway: tests/integration);
- a request freed with its connection, not left to the collector (nothing refers back to
  the cycle once its app is done): here, recorded;
- the disconnect hook: here, on a socket; tests/integration/test_stream_semantics.py through
  the real gateway;
- the per-connection write high-water mark (from the lifespan state):
  tests/integration/test_slow_client.py;
- the head bounds: here, recorded; tests/hostile/test_header_bounds.py on the real gateway
  (`max_header_bytes` from the lifespan state included);
- the draining shutdown: tests/deploy/test_shutdown.py;
- the supervisor's restart and mark-dead: tests/observability/test_process_logs.py
  (`test_a_killed_workers_streams_leave_the_active_streams_gauge`) and
  tests/deploy/test_shutdown.py (two workers draining);
- the app's POST routes called without the app's own frame (`post_routes`), the body reader
  (`_Cycle.body_now`): tests/test_server_fast_paths.py;
- the version guard: tests/test_versions.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import shutil
import socket
import subprocess
import sys
import threading
import time
import types
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import orjson
import pytest
import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.server import ServerState

from gateway.asgi import SSE_HEADERS, BodyWriter, body_writer, disconnect_hook
from gateway.config import GatewayConfig
from gateway.server import LISTEN_BACKLOG, bind
from gateway.server.protocol import MAX_HEADERS, MAX_LINE_BYTES, BoundedHttpToolsProtocol
from tests.support.gateway_proc import GatewayProcess


class RecordingTransport:
    """Enough of an asyncio transport for uvicorn's protocol; keeps every write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default
        )

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def connected(
    app: Any, **config_args: Any
) -> tuple[BoundedHttpToolsProtocol, RecordingTransport, ServerState]:
    """A fresh connection of the gateway's protocol serving `app`, on a recording transport
    (call it inside a running event loop)."""
    config = uvicorn.Config(app, log_level="warning", lifespan="off", **config_args)
    config.load()
    state = ServerState()
    protocol = BoundedHttpToolsProtocol(config=config, server_state=state, app_state={})
    transport = RecordingTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport, state


async def exchange(
    app: Any, request: bytes, read: int = 0, **config_args: Any
) -> RecordingTransport:
    """Feed one request to a fresh connection (in reads of `read` bytes, or one read); the
    transport once the answer is done. The app can reach the protocol as
    `scope["state"]["protocol"]`."""
    protocol, transport, state = connected(app, **config_args)
    protocol.app_state["protocol"] = protocol
    step = read or len(request)
    for at in range(0, len(request), step):
        if not transport.closed:
            protocol.data_received(request[at : at + step])
    for _ in range(100):
        await asyncio.sleep(0)
        if not state.tasks:
            break
    assert not state.tasks, "the app did not finish"
    return transport


POST = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}"


async def writer_after_the_body(
    scope: Scope, receive: Receive
) -> tuple[BodyWriter, BoundedHttpToolsProtocol]:
    """For an app under `exchange`: the request's body writer and its protocol (to play the
    client slow or gone), once the body is read."""
    writer = body_writer(scope)
    assert writer is not None
    await receive()
    return writer, scope["state"]["protocol"]


async def streaming(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"a", b"1")]})
    await send({"type": "http.response.body", "body": b"first", "more_body": True})
    await send({"type": "http.response.body", "body": b"second", "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def test_the_head_leaves_with_the_first_body_part_and_later_parts_each_on_their_own() -> None:
    transport = asyncio.run(exchange(streaming, POST))
    assert len(transport.writes) == 3
    head, second, end = transport.writes
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\na: 1\r\n" in head and b"transfer-encoding: chunked\r\n" in head
    assert head.endswith(b"\r\n\r\n5\r\nfirst\r\n")
    assert (second, end) == (b"6\r\nsecond\r\n", b"0\r\n\r\n")


async def plain(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 404, "headers": headers})
    await send({"type": "http.response.body", "body": b"{}"})


def test_a_plain_answer_is_one_write() -> None:
    (only,) = asyncio.run(exchange(plain, POST)).writes
    assert only.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert only.endswith(b"content-length: 2\r\n\r\n{}")


def test_a_head_request_gets_its_head_though_no_body_part_is_written() -> None:
    request = b"HEAD / HTTP/1.1\r\nhost: x\r\n\r\n"
    (only,) = asyncio.run(exchange(plain, request)).writes
    assert only.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert only.endswith(b"content-length: 2\r\n\r\n")  # and no body


def test_100_continue_leaves_before_the_head_which_is_not_held_then() -> None:
    request = b"POST / HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n{}"
    writes = asyncio.run(exchange(streaming, request)).writes
    assert writes[0] == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert writes[1].startswith(b"HTTP/1.1 200 OK\r\n") and writes[1].endswith(b"\r\n\r\n")
    assert writes[2:] == [b"5\r\nfirst\r\n", b"6\r\nsecond\r\n", b"0\r\n\r\n"]


async def fails_after_the_head(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    raise RuntimeError("a bug after the head")


def test_a_held_head_is_written_before_the_connection_closes() -> None:
    transport = asyncio.run(exchange(fails_after_the_head, POST))
    (only,) = transport.writes
    assert only.startswith(b"HTTP/1.1 200 OK\r\n") and only.endswith(b"\r\n\r\n")
    assert transport.closed


def test_the_body_writer_writes_chunks_only_while_send_would_write_at_once() -> None:
    seen: list[bool] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        writer = body_writer(scope)
        assert writer is not None
        await receive()
        seen.append(writer.write(b"early"))  # before the head: send's job
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        seen.append(writer.write(b"second"))
        seen.append(writer.write(b""))  # nothing to write (an empty chunk would end the body)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        seen.append(writer.write(b"late"))  # after the end

    writes = asyncio.run(exchange(app, POST)).writes
    assert seen == [False, True, True, False]
    assert writes[1:] == [b"6\r\nsecond\r\n", b"0\r\n\r\n"]
    assert writes[0].endswith(b"\r\n\r\n5\r\nfirst\r\n")


def test_the_body_writer_frames_a_part_of_any_size_as_send_does() -> None:
    """`write` takes a part's size line from a table under 1 KiB and formats it above that:
    the same bytes as `send` writes, on both sides of the table's end."""
    sizes = (1, 15, 16, 255, 1023, 1024, 1025, 70_000)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        writer, _ = await writer_after_the_body(scope, receive)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        for size in sizes:
            assert writer.write(b"w" * size)
            await send({"type": "http.response.body", "body": b"s" * size, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    writes = asyncio.run(exchange(app, POST)).writes[1:-1]
    assert len(writes) == 2 * len(sizes)
    for size, written, sent in zip(sizes, writes[::2], writes[1::2], strict=True):
        assert written == sent.replace(b"s", b"w")
        assert written == b"%x\r\n%s\r\n" % (size, b"w" * size)


async def writes_through_the_body_writer(scope: Scope, receive: Receive, send: Send) -> None:
    writer = body_writer(scope)
    assert writer is not None
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"first", "more_body": True})
    assert writer.write(b"second")
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def waits_after_the_head(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})  # held
    assert (await receive())["type"] == "http.disconnect"


@pytest.mark.parametrize("app", [writes_through_the_body_writer, waits_after_the_head])
def test_a_request_is_freed_with_its_connection_not_left_to_the_collector(app: Any) -> None:
    """The body writer sits in the request's scope and the held head is the cycle's
    transport, and both refer back to the request cycle: strong references there would make
    each request a reference cycle (cycle, scope, flow control, events, transport) that
    outlives its connection until a full collection, and under load those come seldom
    (78,000 objects waited after a burst of 3,000 streams). Once answered, and once the
    client left before the first body part."""

    async def serve_one() -> weakref.ref[Any]:
        protocol, _, state = connected(app)
        protocol.data_received(POST)
        for _ in range(5):
            await asyncio.sleep(0)
        cycle = weakref.ref(protocol.cycle)
        protocol.connection_lost(None)
        for _ in range(100):
            await asyncio.sleep(0)
            if not state.tasks:
                break
        assert not state.tasks, "the app did not finish"
        return cycle

    gc.collect()
    gc.disable()  # freed by reference counting alone, or not at all
    try:
        cycle = asyncio.run(serve_one())
        assert cycle() is None
    finally:
        gc.enable()


def test_the_body_writer_declines_while_the_client_is_slow_or_gone() -> None:
    seen: list[bool] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        writer, protocol = await writer_after_the_body(scope, receive)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        protocol.pause_writing()  # the transport's buffer passed its high-water mark
        seen.append(writer.write(b"held"))
        protocol.resume_writing()
        seen.append(writer.write(b"again"))
        protocol.connection_lost(None)
        seen.append(writer.write(b"gone"))

    transport = asyncio.run(exchange(app, POST))
    assert seen == [False, True, False]
    assert b"held" not in b"".join(transport.writes)


# --- bounded heads (the real server's side: tests/hostile/test_header_bounds.py) ---------------

HEAD_BOUND = GatewayConfig.max_header_bytes


def get_of(size: int) -> bytes:
    """A GET whose head (up to and including its blank line) is `size` bytes, in fields
    within their own bound."""
    head = b"GET / HTTP/1.1\r\nhost: x\r\n"
    fields = []
    left = size - len(head) - 2
    while left > 0:
        name = b"x-%d: " % len(fields)
        take = min(left, MAX_LINE_BYTES // 2)
        pad = max(take - len(name) - 2, 0)
        fields.append(name + b"a" * pad + b"\r\n")
        left -= len(fields[-1])
    request = head + b"".join(fields) + b"\r\n"
    assert len(request) == size
    return request


def status_of(transport: RecordingTransport) -> int:
    return int(b"".join(transport.writes).split(b" ", 2)[1])


@pytest.mark.parametrize("read", [0, 1000, 1])
def test_a_head_of_exactly_the_bound_is_served_and_one_byte_more_is_a_431(read: int) -> None:
    served = asyncio.run(exchange(plain, get_of(HEAD_BOUND), read))
    assert status_of(served) == 404 and not served.closed
    refused = asyncio.run(exchange(plain, get_of(HEAD_BOUND + 1), read))
    (only,) = refused.writes
    assert only.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"\r\nconnection: close\r\n" in only and refused.closed
    error = orjson.loads(only.partition(b"\r\n\r\n")[2])["error"]
    assert error["code"] == "request_header_fields_too_large"
    assert error["type"] == "invalid_request_error"


def test_a_read_with_a_small_head_and_a_body_past_the_bound_is_served_whole() -> None:
    body = b"b" * (HEAD_BOUND * 3)
    seen: list[bytes] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        more = True
        while more:
            message = await receive()
            seen.append(message["body"])
            more = message["more_body"]
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    request = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body)
    transport = asyncio.run(exchange(app, request + body))
    assert status_of(transport) == 404 and b"".join(seen) == body


@pytest.mark.parametrize("read", [0, 7, 1000])
def test_a_body_in_one_part_or_many_reaches_the_app_whole(read: int) -> None:
    """A body that came in one part is handed on as it came; one in several parts is
    gathered, whether the app asks before, between or after they arrive."""
    body = bytes(range(256)) * 20
    seen: list[bytes] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        more = True
        while more:
            message = await receive()
            seen.append(message["body"])
            more = message["more_body"]
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    request = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body)
    transport = asyncio.run(exchange(app, request + body, read))
    assert status_of(transport) == 404 and b"".join(seen) == body
    assert all(type(part) is bytes for part in seen)


def test_pipelined_requests_each_get_the_whole_bound() -> None:
    # Two heads of 40 KiB in one read: 80 KiB, but each head is within its bound.
    request = get_of(40 * 1024) + get_of(40 * 1024)
    transport = asyncio.run(exchange(plain, request))
    assert b"".join(transport.writes).count(b"HTTP/1.1 404 Not Found") == 2


def test_pipelined_requests_are_answered_in_the_order_they_came() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        body = scope["path"].encode()
        headers = [(b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    request = b"".join(b"GET /%d HTTP/1.1\r\nhost: x\r\n\r\n" % i for i in range(4))
    answers = b"".join(asyncio.run(exchange(app, request)).writes)
    assert [a.rsplit(b"\r\n\r\n", 1)[-1] for a in answers.split(b"HTTP/1.1 ")[1:]] == [
        b"/0",
        b"/1",
        b"/2",
        b"/3",
    ]


def test_the_field_count_and_line_bounds_are_exact() -> None:
    fields = b"".join(b"x-%d: 1\r\n" % i for i in range(MAX_HEADERS - 1))
    at_bound = b"GET / HTTP/1.1\r\nhost: x\r\n" + fields + b"\r\n"
    assert status_of(asyncio.run(exchange(plain, at_bound))) == 404
    past = at_bound.replace(b"host: x\r\n", b"host: x\r\nx-more: 1\r\n")
    assert status_of(asyncio.run(exchange(plain, past))) == 431
    value = b"a" * (MAX_LINE_BYTES - len(b"x-big"))
    line = b"GET / HTTP/1.1\r\nhost: x\r\nx-big: %s\r\n\r\n"
    assert status_of(asyncio.run(exchange(plain, line % value))) == 404
    assert status_of(asyncio.run(exchange(plain, line % (value + b"a")))) == 431
    target = b"/" + b"t" * (MAX_LINE_BYTES - 1)
    request = b"GET %s HTTP/1.1\r\nhost: x\r\n\r\n"
    assert status_of(asyncio.run(exchange(plain, request % target))) == 404
    assert status_of(asyncio.run(exchange(plain, request % (target + b"t")))) == 414


def test_endless_trailers_close_the_connection_and_the_app_sees_a_disconnect() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            seen.append(message["type"])
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                return

    async def run() -> RecordingTransport:
        protocol, transport, state = connected(app)
        protocol.data_received(
            b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\nx-trailer: "
        )
        sent = 0
        while not transport.closed and sent < 10 * HEAD_BOUND:
            protocol.data_received(b"a" * 1000)
            sent += 1000
        assert transport.closed and sent <= HEAD_BOUND + 1000, sent
        protocol.connection_lost(None)  # what closing does on a real transport
        for _ in range(100):
            await asyncio.sleep(0)
            if not state.tasks:
                break
        assert not state.tasks
        return transport

    transport = asyncio.run(run())
    # The app was reading its body: no answer fits in the middle of that, only a close.
    assert transport.writes == [] and seen[-1] == "http.disconnect"


def test_what_the_protocol_took_over_from_uvicorn_still_works() -> None:
    """`data_received` and `on_header` are uvicorn's, rewritten with the bounds: its 400 for
    a request llhttp refuses, and header values without their trailing whitespace."""
    seen: list[Any] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["headers"])
        await plain(scope, receive, send)

    request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Padded: value \t\r\n\r\n"
    assert status_of(asyncio.run(exchange(app, request))) == 404
    assert seen == [[(b"host", b"x"), (b"x-padded", b"value")]]
    refused = asyncio.run(exchange(app, b"GET / HTTP/1.1\r\nbad header\r\n\r\n"))
    assert status_of(refused) == 400 and refused.closed
    for name in ("_unset_keepalive_if_required", "send_400_response", "handle_websocket_upgrade"):
        assert callable(getattr(BoundedHttpToolsProtocol, name))


# --- the gateway's response cycle against uvicorn's --------------------------------------------

DEFAULTS = [(b"date", b"Sat, 05 Dec 2026 21:00:00 GMT"), (b"server", b"uvicorn")]

HEADER_SETS = [
    [],
    [(b"content-type", b"text/event-stream"), (b"x-request-id", b"abc")],
    [(b"x-tab", b"a\tb"), (b"x-obs", b"\xe9t\xe9"), (b"x-empty", b""), (b"x/y", b"1")],
    [(b"Content-Type", b"application/json"), (b"content-length", b"2")],
    [(b"connection", b"keep-alive, Close")],
    [(b"x-connection", b"close"), (b"transfer-encoding", b"chunked")],
    [(b"x-bad", b"a\r\nx-injected: 1")],
    [(b"x-bad", b"a\nx-injected: 1")],
    [(b"x-bad", b"a\rb")],
    [(b"x-nul", b"a\x00b")],
    [(b"x bad", b"1")],
    [(b"x-bad:", b"1")],
    [(b"x-del", b"a\x7fb"), (b"x-us", b"a\x1fb")],
    [(b"x\tname", b"1")],
    [(b"", b"an empty name"), (b"x-high", b"\xff\x80")],
    [(bytearray(b"x-bytearray"), b"1")],
    [(b"transfer-encoding", b"gzip")],
]

REQUESTS = [
    b"GET /a%20b/c?x=1&y=%20 HTTP/1.1\r\nhost: x\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nhost: x\r\n\r\n",
    b"GET / HTTP/1.0\r\nhost: x\r\n\r\n",
    b"GET /v1/chat HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    b"POST / HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n{}",
]


async def answer_with(
    protocol_class: Any, request: bytes, status: int, headers: list[tuple[bytes, bytes]]
) -> tuple[bytes, bool, list[Any]]:
    """What a connection of `protocol_class` writes (all of it), whether it closed, and what
    the app saw of its scope, for an app that answers `status` with `headers`."""
    seen: list[Any] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        keys = ("type", "asgi", "http_version", "server", "client", "scheme", "root_path")
        seen.append([scope[k] for k in keys])
        seen.append([scope[k] for k in ("headers", "state", "method", "path", "raw_path")])
        seen.append(scope["query_string"])
        await receive()
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if (b"content-length", b"2") in headers:
            await send({"type": "http.response.body", "body": b"{}"})
            return
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    written, closed = await served_by(app, request, protocol_class, {"k": 1})
    return written, closed, seen


@pytest.mark.parametrize("request_", REQUESTS)
@pytest.mark.parametrize("status", [200, 204, 304, 404])
def test_the_gateways_cycle_writes_and_closes_what_uvicorns_does(
    request_: bytes, status: int
) -> None:
    """Byte for byte, for heads the cycle builds in one piece and those it leaves to
    uvicorn's way (upper-case names, the framing fields), for HEAD, HTTP/1.0,
    `connection: close` and `100 Continue`; and a header that uvicorn refuses (a CR, LF or
    NUL in a value: no header injection; a separator in a name) is refused the same way:
    nothing of it is written, and the connection closes."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    # The cycle keeps uvicorn 0.55's keep-alive rules on every tested uvicorn: before 0.55,
    # uvicorn's own cycle neither closed on `connection: keep-alive, Close` (it matched the
    # whole value) nor said `connection: close` to an HTTP/1.0 client it was closing on.
    older = tuple(int(part) for part in uvicorn.__version__.split(".")[:2]) < (0, 55)
    for headers in HEADER_SETS:
        ours = asyncio.run(answer_with(BoundedHttpToolsProtocol, request_, status, headers))
        assert b"x-injected" not in ours[0]
        if older and (b"HTTP/1.0" in request_ or (b"connection", b"keep-alive, Close") in headers):
            written, closed, _ = ours
            assert closed, headers
            if b"HTTP/1.0" in request_ and written.startswith(b"HTTP/1.1 %d" % status):
                head = written.split(b"\r\n\r\n")[0].lower().split(b"\r\n")
                assert any(f.startswith(b"connection:") and b"close" in f for f in head), headers
            continue
        theirs = asyncio.run(answer_with(HttpToolsProtocol, request_, status, headers))
        assert ours == theirs, headers


async def served_by(
    app: Any,
    request: bytes,
    protocol_class: Any = BoundedHttpToolsProtocol,
    app_state: dict[str, Any] | None = None,
) -> tuple[bytes, bool]:
    """What a connection of `protocol_class` (the gateway's) writes (all of it) for `app`,
    and whether it closed."""
    config = uvicorn.Config(app, log_level="critical", lifespan="off", proxy_headers=False)
    config.load()
    state = ServerState()
    state.default_headers = DEFAULTS
    protocol = protocol_class(config=config, server_state=state, app_state=app_state or {})
    transport = RecordingTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(request)
    for _ in range(100):
        await asyncio.sleep(0)
        if not state.tasks:
            break
    assert not state.tasks
    return b"".join(transport.writes), transport.closed


@pytest.mark.parametrize("request_", REQUESTS)
@pytest.mark.parametrize("status", [200, 204, 404])
def test_the_body_writers_start_and_end_write_what_the_sends_write(
    request_: bytes, status: int
) -> None:
    """`start` (the head and the first body part) and `end` (the last part), or the sends
    where they decline, against the three sends alone: byte for byte, closed alike, the same
    errors (a refused header, a body on a 204) answered the same way."""

    def app_of(direct: bool, headers: list[tuple[bytes, bytes]]) -> Any:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            writer = body_writer(scope)
            assert writer is not None
            await receive()
            if not (direct and writer.start(status, headers, b"first")):
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": b"first", "more_body": True})
            if not (direct and writer.end(b"last")):
                await send({"type": "http.response.body", "body": b"last", "more_body": False})

        return app

    for headers in [*HEADER_SETS, [*SSE_HEADERS, (b"x-request-id", b"abc")]]:
        ours = asyncio.run(served_by(app_of(True, headers), request_))
        assert ours == asyncio.run(served_by(app_of(False, headers), request_)), headers


def test_the_body_writers_start_and_end_decline_where_send_must_do_it() -> None:
    seen: list[bool] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        writer, protocol = await writer_after_the_body(scope, receive)
        seen.append(writer.end(b"early"))  # not started: send's job (and its error)
        seen.append(writer.start(200, [(b"X-Upper", b"1")], b"x"))  # uvicorn's way: send's
        protocol.pause_writing()
        seen.append(writer.start(200, [], b"held"))  # the client is slow: send waits
        protocol.resume_writing()
        seen.append(writer.start(200, [(b"a", b"1")], b"first"))
        seen.append(writer.start(200, [], b"again"))  # started already
        protocol.pause_writing()
        seen.append(writer.end(b"held"))
        protocol.resume_writing()
        seen.append(writer.end(b"last"))
        seen.append(writer.end(b"late"))  # complete already

    writes = asyncio.run(exchange(app, POST)).writes
    assert seen == [False, False, False, True, False, False, True, False]
    assert len(writes) == 2
    assert writes[0].endswith(b"\r\na: 1\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
    assert writes[1] == b"4\r\nlast\r\n0\r\n\r\n"

    async def heads(scope: Scope, receive: Receive, send: Send) -> None:
        writer, protocol = await writer_after_the_body(scope, receive)
        if scope["method"] == "POST" and b"expect" not in dict(scope["headers"]):
            protocol.connection_lost(None)  # the client is gone
        seen.append(writer.start(200, [], b""))  # nor for HEAD, nor after 100 Continue

    seen.clear()
    asyncio.run(exchange(heads, b"HEAD / HTTP/1.1\r\nhost: x\r\n\r\n"))
    asyncio.run(exchange(heads, b"POST / HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\n\r\n"))
    asyncio.run(exchange(heads, POST))
    assert seen == [False, False, False]


def test_the_one_pass_head_check_passes_exactly_the_fields_uvicorn_takes_as_they_are() -> None:
    """`_lines` (a set of names known good, one `translate` over the values) against
    uvicorn's own per-field rules, on random fields: whatever it passes, uvicorn would write
    unchanged, with no framing field among them; whatever it refuses takes uvicorn's way."""
    import random

    from uvicorn.protocols.http.httptools_impl import HEADER_RE, HEADER_VALUE_RE

    from gateway.server.cycle import _lines

    def as_is(name: bytes, value: bytes) -> bool:
        framing = name in (b"content-length", b"transfer-encoding", b"connection")
        lower = name == name.lower()
        return not (HEADER_RE.search(name) or HEADER_VALUE_RE.search(value) or framing) and lower

    alphabet = b"ab-\t\r\n\x00\x1f\x7f\x80 :A"
    rng = random.Random(22)
    words = [b"content-length", b"connection", b"x-a", b"", b"Content-Type"]
    passed = 0
    for _ in range(3000):
        headers = []
        for _ in range(rng.randrange(0, 4)):
            name = rng.choice(words) if rng.random() < 0.2 else bytes(rng.choices(alphabet, k=3))
            headers.append((name, bytes(rng.choices(alphabet, k=rng.randrange(0, 5)))))
        lines = b"".join([b"%s: %s\r\n" % (name, value) for name, value in headers])
        expected = all(as_is(name, value) for name, value in headers)
        assert _lines(headers) == (lines if expected else None), headers
        passed += expected
    assert 100 < passed < 2900  # both answers were tried


def test_header_names_and_targets_are_remembered_only_when_short() -> None:
    """The protocol remembers header names as clients spell them and request targets as
    parsed, for the next requests; a long name or target is not kept (clients choose them)."""
    from gateway.server import protocol

    long_name, long_target = b"X-" + b"n" * 100, b"/" + b"t" * 100
    request = b"GET %s HTTP/1.1\r\nHost: x\r\n%s: 1\r\n\r\n"
    seen: list[Any] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((scope["headers"], scope["path"]))
        await plain(scope, receive, send)

    for _ in range(2):
        asyncio.run(exchange(app, request % (long_target, long_name)))
        asyncio.run(exchange(app, request % (b"/short", b"X-Short")))
    assert (
        seen[0] == seen[2] == ([(b"host", b"x"), (long_name.lower(), b"1")], long_target.decode())
    )
    assert seen[1] == seen[3] == ([(b"host", b"x"), (b"x-short", b"1")], "/short")
    assert protocol._NAMES[b"X-Short"] == b"x-short" and long_name not in protocol._NAMES
    assert seen[1][0][1][0] is seen[3][0][1][0]  # one shared name


# --- on a real socket, under uvicorn's own server ---------------------------------------------


def with_gateway_state(app: Any, gateway: Any) -> Any:
    """`app` with a lifespan that puts `gateway` in the lifespan state, where the protocol
    looks for the gateway's runtime."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            return await app(scope, receive, send)
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                scope["state"]["gateway"] = gateway
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return

    return wrapped


@contextlib.contextmanager
def served(app: Any, gateway: Any = None) -> Iterator[tuple[str, int]]:
    """`app` under uvicorn's server with the gateway's protocol, in a thread, on a real
    socket, with `gateway` (if any) in the lifespan state; its address."""
    sock = bind("127.0.0.1", 0)
    config = uvicorn.Config(
        with_gateway_state(app, gateway),
        lifespan="on",
        http=BoundedHttpToolsProtocol,
        log_level="warning",
        log_config=None,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:  # uvicorn offers no event to wait on
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)
        yield sock.getsockname()[:2]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def read_until(conn: socket.socket, end: bytes, data: bytes = b"") -> bytes:
    while not data.endswith(end):
        part = conn.recv(65536)
        assert part, f"the connection closed after {data!r}"
        data += part
    return data


def test_on_a_socket_the_head_waits_for_the_first_body_part() -> None:
    head_sent = threading.Event()
    go_on = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"a", b"1")]})
        head_sent.set()
        await asyncio.to_thread(go_on.wait, 10)
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    with served(app) as address, socket.create_connection(address, timeout=10) as conn:
        conn.sendall(POST)
        assert head_sent.wait(10)
        conn.settimeout(0.3)  # uvicorn alone writes the head at once: it would be here by now
        with pytest.raises(TimeoutError):
            conn.recv(65536)
        go_on.set()
        conn.settimeout(10)
        first = conn.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"\r\n\r\n5\r\nfirst\r\n" in first
        assert read_until(conn, b"0\r\n\r\n", first).endswith(b"first\r\n0\r\n\r\n")


def test_on_a_socket_the_body_writer_writes_chunks_between_sends() -> None:
    wrote: list[bool] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        writer = body_writer(scope)
        assert writer is not None
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        wrote.append(writer.write(b"second"))
        wrote.append(writer.write(b"third"))
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    with served(app) as (host, port), httpx.Client(timeout=10) as client:
        response = client.post(f"http://{host}:{port}/", content=b"{}")
    assert wrote == [True, True]
    assert response.status_code == 200 and response.content == b"firstsecondthird"
    assert response.headers["transfer-encoding"] == "chunked"


def test_on_a_socket_the_disconnect_hook_fires_when_the_client_leaves_mid_response() -> None:
    fired = threading.Event()
    ended: list[bool] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        hook = disconnect_hook(scope)
        assert hook is not None
        lost = asyncio.Event()
        hook.callback = lost.set
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await asyncio.wait_for(lost.wait(), 10)
        fired.set()
        ended.append(hook.lost)

    with served(app) as address:
        with socket.create_connection(address, timeout=10) as conn:
            conn.sendall(POST)
            read_until(conn, b"5\r\nfirst\r\n")
        assert fired.wait(10), "the hook did not fire"
    assert ended == [True]


def bytes_taken_before_the_client_is_slow(stream_buffer_bytes: int) -> int:
    """What a connection takes of a response its client does not read before the body
    writer declines (the protocol's write buffer passed its high-water mark): the kernel's
    socket buffers plus that mark."""
    taken: list[int] = []
    counted = threading.Event()
    part = b"x" * 1024

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        writer, hook = body_writer(scope), disconnect_hook(scope)
        assert writer is not None and hook is not None
        lost = asyncio.Event()
        hook.callback = lost.set
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        total = 0
        while total < 64 * 1024 * 1024 and writer.write(part):
            total += len(part)
        taken.append(total)
        counted.set()
        await asyncio.wait_for(lost.wait(), 10)

    config = types.SimpleNamespace(
        stream_buffer_bytes=stream_buffer_bytes, max_header_bytes=HEAD_BOUND
    )
    with served(app, types.SimpleNamespace(config=config)) as address:
        conn = socket.socket()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel's part small
        with conn:
            conn.settimeout(10)
            conn.connect(address)
            conn.sendall(POST)
            assert counted.wait(10), "the body writer never declined"
    return taken[0]


def test_on_a_socket_each_connection_gets_the_configured_high_water_mark() -> None:
    """`stream_buffer_bytes`, from the lifespan state, bounds what a slow client's connection
    holds (uvicorn alone leaves asyncio's 64 KiB)."""
    mib = 1024 * 1024
    # Both also fill the kernel's socket buffers: a few MiB at most (net.ipv4.tcp_wmem's
    # maximum is 4 MiB by default), whatever the mark.
    small = bytes_taken_before_the_client_is_slow(4 * 1024)
    large = bytes_taken_before_the_client_is_slow(16 * mib)
    assert large >= 16 * mib, large
    assert small < 8 * mib, small


def test_gateway_serve_listens_with_the_backlog_the_kernel_allows(tmp_path: Path) -> None:
    """A burst of thousands of connections waits in the accept queue while the loop sets
    requests up; uvicorn's 2048 overflowed at 5,000 (SYNs dropped, a second's retry)."""
    ss = shutil.which("ss")
    if ss is None:
        pytest.skip("no `ss` (iproute2) to read the listening socket's backlog")
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    with GatewayProcess(None, tmp_path) as gateway:
        listening = subprocess.run(
            [ss, "-Hltn", f"sport = :{gateway.port}"], capture_output=True, check=True, text=True
        ).stdout.split()
    assert listening[0] == "LISTEN"
    assert int(listening[2]) == min(somaxconn, LISTEN_BACKLOG)  # Send-Q: the backlog


def test_the_connections_events_are_small_and_still_wake_their_waiters() -> None:
    """uvicorn's two events per connection (flow control's, the request cycle's) are
    replaced by ones with a list of waiters, not a 760-byte deque, and so is its queue of
    pipelined requests: a body that arrives after the app began waiting still wakes it, and
    so does the end of a write pause."""
    got: list[bytes] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        got.append(message["body"])
        headers = [(b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 404, "headers": headers})
        await send({"type": "http.response.body", "body": b"{}"})

    async def run() -> tuple[RecordingTransport, BoundedHttpToolsProtocol]:
        protocol, transport, state = connected(app)
        assert sys.getsizeof(protocol.pipeline) < 100
        assert protocol.flow._is_writable_event is None  # made when writing first pauses
        protocol.data_received(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n")
        events = [protocol.cycle.message_event]
        for _ in range(5):
            await asyncio.sleep(0)
        assert not got and len(events[0]._waiters) == 1  # the app waits for its body
        protocol.data_received(b"{}")
        protocol.flow.pause_writing()
        events.append(protocol.flow._is_writable_event)
        assert all(sys.getsizeof(event._waiters) < 100 for event in events)
        drained = asyncio.ensure_future(protocol.flow.drain())
        for _ in range(20):
            await asyncio.sleep(0)
        assert not drained.done()
        protocol.flow.resume_writing()
        await asyncio.wait_for(drained, 1)
        for _ in range(100):
            await asyncio.sleep(0)
            if not state.tasks:
                break
        assert not state.tasks, "the app did not finish"
        return transport, protocol

    transport, _ = asyncio.run(run())
    assert got == [b"{}"]
    assert status_of(transport) == 404


def test_the_addresses_are_the_ones_the_transport_kept_not_its_sockets() -> None:
    """uvicorn asks the transport for its socket and asks that for both addresses: on uvloop
    a Python socket made per address and 4 getsockname and 1 getpeername system calls per
    connection. The protocol takes the addresses the transport noted when it connected."""
    asked: list[str] = []

    class Asked(RecordingTransport):
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            asked.append(name)
            return super().get_extra_info(name, default)

    async def connect() -> BoundedHttpToolsProtocol:
        config = uvicorn.Config(lambda: None, log_level="warning", lifespan="off")
        state = ServerState()
        protocol = BoundedHttpToolsProtocol(config=config, server_state=state, app_state={})
        protocol.connection_made(Asked())  # type: ignore[arg-type]
        return protocol

    protocol = asyncio.run(connect())
    assert "socket" not in asked
    assert (protocol.server, protocol.client) == (("127.0.0.1", 8000), ("127.0.0.1", 50000))
    # A server without TLS has no TLS transports: the scheme is not asked for either.
    assert "sslcontext" not in asked and protocol.scheme == "http"


def test_a_tls_servers_connections_get_their_scheme_from_the_transport() -> None:
    class Tls(RecordingTransport):
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return object() if name == "sslcontext" else super().get_extra_info(name, default)

    async def connect(transport: RecordingTransport) -> BoundedHttpToolsProtocol:
        config = uvicorn.Config(lambda: None, log_level="warning", lifespan="off")
        config.load()
        config.ssl = cast(Any, object())  # as `load()` sets it for a server with a certificate
        state = ServerState()
        protocol = BoundedHttpToolsProtocol(config=config, server_state=state, app_state={})
        protocol.connection_made(transport)  # type: ignore[arg-type]
        return protocol

    assert asyncio.run(connect(Tls())).scheme == "https"
    assert asyncio.run(connect(RecordingTransport())).scheme == "http"


# --- per server, not per connection: the loop, the keep-alive timer ---------------------------


def test_a_servers_connections_ask_asyncio_for_the_loop_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On Python 3.11 asking asyncio for the running loop is a getpid() system call; uvicorn's
    protocol asks per connection. A server run again, on a new loop, gets that loop."""
    config = uvicorn.Config(plain, log_level="warning", lifespan="off")
    state = ServerState()
    asked: list[object] = []
    get_event_loop = asyncio.get_event_loop

    def counted() -> asyncio.AbstractEventLoop:
        asked.append(None)
        return get_event_loop()

    async def connect(count: int) -> set[asyncio.AbstractEventLoop]:
        monkeypatch.setattr(asyncio, "get_event_loop", counted)
        protocols = [
            BoundedHttpToolsProtocol(config=config, server_state=state, app_state={})
            for _ in range(count)
        ]
        monkeypatch.undo()
        assert {p.loop for p in protocols} == {asyncio.get_running_loop()}
        return {p.loop for p in protocols}

    first = asyncio.run(connect(3))
    assert len(asked) == 1
    second = asyncio.run(connect(2))
    assert len(asked) == 2 and first != second


def test_the_protocol_has_every_attribute_uvicorns_sets_with_uvicorns_values() -> None:
    """What is the same for every connection of a server is read through the server's
    `_Shared` and a connection's defaults are class attributes, but each attribute uvicorn's
    protocol sets in its `__init__` and `connection_made` reads as uvicorn's does."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    async def both() -> tuple[Any, Any]:
        config = uvicorn.Config(plain, log_level="warning", lifespan="off", root_path="/r")
        config.load()
        state = ServerState()
        made = []
        transport = RecordingTransport()
        for cls in (HttpToolsProtocol, BoundedHttpToolsProtocol):
            protocol = cls(config=config, server_state=state, app_state={"k": 1})
            protocol.connection_made(transport)  # type: ignore[arg-type]
            made.append(protocol)
        return made[0], made[1]

    theirs, ours = asyncio.run(both())
    names = set(vars(theirs)) - {"parser", "flow", "pipeline"}  # ours: own kinds, tested above
    assert len(names) > 20
    for name in sorted(names):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert list(ours.pipeline) == list(theirs.pipeline) == []


def test_idle_connections_close_at_their_keep_alive_deadlines_on_one_timer() -> None:
    """uvicorn arms and cancels a loop timer per response; the gateway keeps a server's idle
    connections in the order they went idle with their deadlines, under one timer. A
    connection closes when its keep-alive timeout has passed since its last response, not
    while a request is coming in or after it was lost, and is not kept once it is gone."""

    async def run() -> None:
        config = uvicorn.Config(plain, log_level="warning", lifespan="off", proxy_headers=False)
        config.timeout_keep_alive = cast(Any, 0.2)
        config.load()
        state = ServerState()
        loop = asyncio.get_running_loop()
        connections = []
        for _ in range(4):
            protocol = BoundedHttpToolsProtocol(config=config, server_state=state, app_state={})
            transport = RecordingTransport()
            protocol.connection_made(transport)  # type: ignore[arg-type]
            connections.append((protocol, transport))
        shared = connections[0][0]._shared
        keep_alive = shared.keep_alive

        async def until(done: Any, pause: float = 0.0) -> float:
            for _ in range(1000):
                if done():
                    return loop.time()
                await asyncio.sleep(pause)
            raise AssertionError("timed out")

        async def served(protocol: BoundedHttpToolsProtocol) -> float:
            protocol.data_received(POST)
            return await until(lambda: not state.tasks)

        (_, a_t), (b, b_t), (c, c_t), (d, d_t) = connections
        idle_at = [await served(p) for p, _ in connections]
        assert len(keep_alive) == 4 and keep_alive._timer is not None
        assert [t.writes != [] for _, t in connections] == [True] * 4
        b.data_received(POST[:10])  # b's next request is coming in: no timeout now
        c.connection_lost(ConnectionResetError())  # c is gone (its transport not closed)
        assert len(keep_alive) == 2
        await asyncio.sleep(0.1)
        d_idle = await served(d)  # d's next request, answered: its timeout starts again
        a_closed = await until(lambda: a_t.closed, 0.005)
        assert a_closed - idle_at[0] >= 0.2 - 0.002  # uvloop's timers round to 1 ms
        assert not (b_t.closed or c_t.closed or d_t.closed)
        d_closed = await until(lambda: d_t.closed, 0.005)
        assert d_closed - d_idle >= 0.2 - 0.002
        assert not (b_t.closed or c_t.closed)
        assert len(keep_alive) == 0 and keep_alive._timer is None
        for protocol, _ in connections:
            protocol.connection_lost(None)
        assert len(keep_alive) == 0

    asyncio.run(run())


def test_on_a_socket_the_scope_has_the_connections_addresses() -> None:
    addresses: list[tuple[Any, Any]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        addresses.append((scope["server"], scope["client"]))
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    with served(app) as address, socket.create_connection(address, timeout=10) as conn:
        conn.sendall(POST)
        read_until(conn, b"0\r\n\r\n")
        assert addresses == [(address, conn.getsockname()[:2])]
