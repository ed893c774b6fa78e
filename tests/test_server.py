"""`gateway serve`'s HTTP protocol (uvicorn's, with the gateway's additions), driven with a
transport that records each write: a response's head leaves with its first body part, in one
write, except where it must leave on its own."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.server import ServerState

from gateway.asgi import body_writer
from gateway.config import GatewayConfig
from gateway.server import MAX_HEADERS, MAX_LINE_BYTES, BoundedHttpToolsProtocol


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


async def exchange(app: Any, request: bytes, read: int = 0) -> RecordingTransport:
    """Feed one request to a fresh connection (in reads of `read` bytes, or one read); the
    transport once the answer is done. The app can reach the protocol as
    `scope["state"]["protocol"]`."""
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    config.load()
    state = ServerState()
    app_state: dict[str, Any] = {}
    protocol = BoundedHttpToolsProtocol(config=config, server_state=state, app_state=app_state)
    app_state["protocol"] = protocol
    transport = RecordingTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
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


def test_the_body_writer_declines_while_the_client_is_slow_or_gone() -> None:
    seen: list[bool] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        writer = body_writer(scope)
        assert writer is not None
        protocol = scope["state"]["protocol"]
        await receive()
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


def test_pipelined_requests_each_get_the_whole_bound() -> None:
    # Two heads of 40 KiB in one read: 80 KiB, but each head is within its bound.
    request = get_of(40 * 1024) + get_of(40 * 1024)
    transport = asyncio.run(exchange(plain, request))
    assert b"".join(transport.writes).count(b"HTTP/1.1 404 Not Found") == 2


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
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        config.load()
        state = ServerState()
        protocol = BoundedHttpToolsProtocol(config=config, server_state=state, app_state={})
        transport = RecordingTransport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
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
