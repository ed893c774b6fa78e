"""`gateway serve`'s HTTP protocol (uvicorn's, with the gateway's additions), driven with a
transport that records each write: a response's head leaves with its first body part, in one
write, except where it must leave on its own."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.server import ServerState

from gateway.edge.http import body_writer
from gateway.server import BoundedHttpToolsProtocol


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


async def exchange(app: Any, request: bytes) -> RecordingTransport:
    """Feed one request to a fresh connection; the transport once the answer is done. The
    app can reach the protocol as `scope["state"]["protocol"]`."""
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    config.load()
    state = ServerState()
    app_state: dict[str, Any] = {}
    protocol = BoundedHttpToolsProtocol(config=config, server_state=state, app_state=app_state)
    app_state["protocol"] = protocol
    transport = RecordingTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(request)
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
