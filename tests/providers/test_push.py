"""A stream pushed from the native transport's callbacks (`SSEUpstream.push`): what the
sink gets, in order, and how the stream ends, over a real socket.

The server writes each event as its own network write, with a pause between, so each
arrives in its own socket read as a model server's would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from gateway.errors import GatewayError, UpstreamError
from gateway.providers.openai import OpenAIStream
from gateway.sse import SSEEvent
from gateway.transports.native import NativeBody, NativeTransport

CHUNK = b'data: {"choices":[{"index":0,"delta":{"content":"t%d"},"finish_reason":null}]}\n\n'
FINISH = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
DONE = b"data: [DONE]\n\n"


class Sink:
    def __init__(self) -> None:
        self.ready = True
        self.got: list[bytes] = []
        self.last = b""
        self.ended = asyncio.get_running_loop().create_future()

    def relay(self, data: bytes) -> None:
        self.got.append(data)

    def end(self, error: Exception | None, last: bytes = b"") -> None:
        self.last = last
        self.got.append(last)  # for the client all the same: sent with the response's end
        self.ended.set_result(error)


@contextlib.asynccontextmanager
async def _opened(
    events: list[bytes],
    stream_class: type[OpenAIStream] = OpenAIStream,
    *,
    last_with_end: bool = False,
) -> AsyncIterator[OpenAIStream]:
    """A stream from a server that sends `events`, each its own write, then ends (in the
    last event's write with `last_with_end`)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n"
            )
            for i, event in enumerate(events):
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                if last_with_end and i == len(events) - 1:
                    break
                await writer.drain()
                await asyncio.sleep(0.005)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            await reader.read()  # until the client closes its end
        except ConnectionError:
            pass  # the client closed first (a test that ended the stream early)
        finally:
            writer.close()

    async with _served(handle, stream_class) as stream:
        yield stream


@contextlib.asynccontextmanager
async def _served(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    stream_class: type[OpenAIStream] = OpenAIStream,
) -> AsyncIterator[OpenAIStream]:
    """A stream over the native transport from a server on 127.0.0.1 that runs `handle`."""
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport = NativeTransport()
    try:
        request = httpx.Request("POST", f"http://127.0.0.1:{port}/v1/chat/completions")
        response = await transport.handle_async_request(request)
        stream = stream_class(response, "p", include_usage=False)
        try:
            yield stream
        finally:
            await stream.aclose()
    finally:
        await transport.aclose()
        server.close()
        await server.wait_closed()


async def _push(
    events: list[bytes],
    stream_class: type[OpenAIStream] = OpenAIStream,
    *,
    last_with_end: bool = False,
) -> tuple[Sink, Exception | None, OpenAIStream]:
    async with _opened(events, stream_class, last_with_end=last_with_end) as stream:
        sink = Sink()
        assert stream.push(sink)
        error = await asyncio.wait_for(sink.ended, 5)
        return sink, error, stream


def test_every_event_is_delivered_in_order_then_the_end() -> None:
    events = [CHUNK % i for i in range(5)] + [FINISH, DONE]
    sink, error, stream = asyncio.run(_push(events))
    assert error is None
    assert b"".join(sink.got) == b"".join(events)
    assert stream.state.finished and stream.state.done_sent
    assert stream.state.completion_estimate == 5


def test_the_read_that_ends_the_body_is_handed_over_with_the_end() -> None:
    """Its bytes go to `end` (`last`), for the relay to write with the response's end in
    one write; a last read the end does not come with is relayed as any other."""
    events = [CHUNK % 0, CHUNK % 1, FINISH + DONE]
    sink, error, stream = asyncio.run(_push(events, last_with_end=True))
    assert error is None
    assert sink.last == FINISH + DONE
    assert sink.got == [CHUNK % 0, CHUNK % 1, FINISH + DONE]
    assert stream.state.finished and stream.state.done_sent
    sink, error, _ = asyncio.run(_push(events))
    assert error is None and sink.last == b""
    assert sink.got == [CHUNK % 0, CHUNK % 1, FINISH + DONE, b""]


def test_the_first_event_says_whether_the_stream_is_over_with_it() -> None:
    """`state.over` after the first event, which the relay reads to go without a pump: True
    only when the body's end came in that read and no error waits for the next one."""
    error = b'data: {"error":{"message":"overloaded"}}\n\n'

    async def first(events: list[bytes], last_with_end: bool) -> tuple[bytes, bool]:
        async with _opened(events, last_with_end=last_with_end) as stream:
            data = await stream.__anext__()
            return data, stream.state.over

    assert asyncio.run(first([CHUNK % 0 + FINISH + DONE], True)) == (
        CHUNK % 0 + FINISH + DONE,
        True,
    )
    assert asyncio.run(first([CHUNK % 0, FINISH + DONE], False)) == (CHUNK % 0, False)
    assert asyncio.run(first([CHUNK % 0 + error], True)) == (CHUNK % 0, False)


def test_an_event_that_is_not_json_ends_the_stream_after_the_ones_before() -> None:
    events = [CHUNK % 0, CHUNK % 1, b"data: {not json\n\n", CHUNK % 2]
    sink, error, _ = asyncio.run(_push(events))
    assert b"".join(sink.got) == CHUNK % 0 + CHUNK % 1
    assert isinstance(error, UpstreamError) and error.kind == "malformed"


def test_a_bug_in_translate_reaches_the_sink_instead_of_the_event_loop() -> None:
    class Broken(OpenAIStream):
        def translate(self, events: list[SSEEvent], out: list[bytes]) -> None:
            raise KeyError("a bug")

    _, error, _ = asyncio.run(_push([CHUNK % 0], stream_class=Broken))
    assert isinstance(error, KeyError) and not isinstance(error, GatewayError)


def test_a_sink_that_is_not_ready_gets_nothing_until_resumed() -> None:
    events = [CHUNK % i for i in range(3)] + [FINISH, DONE]

    async def main() -> tuple[list[bytes], list[bytes], Exception | None]:
        async with _opened(events) as stream:
            sink = Sink()
            sink.ready = False
            assert stream.push(sink)
            await asyncio.sleep(0.2)  # the whole answer has arrived by now
            held = list(sink.got)
            assert not sink.ended.done()  # the end waits behind the bytes
            sink.ready = True
            stream.resume_push()  # what the relay does once its send is done
            error = await asyncio.wait_for(sink.ended, 5)
            return held, sink.got, error

    held, got, error = asyncio.run(main())
    assert held == []
    assert error is None and b"".join(got) == b"".join(events)


def test_iterating_takes_what_already_arrived_without_the_bodys_own_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    anext = NativeBody.__anext__

    async def counted(body: NativeBody) -> bytes:
        calls.append(1)
        return await anext(body)

    monkeypatch.setattr(NativeBody, "__anext__", counted)
    events = [CHUNK % 0, CHUNK % 1, FINISH, DONE]

    async def main() -> list[bytes]:
        async with _opened(events) as stream:
            await asyncio.sleep(0.1)  # everything arrived, the end too
            return [data async for data in stream]

    assert b"".join(asyncio.run(main())) == b"".join(events)
    assert calls == [1]  # only to learn the end: every read was there already


def test_a_sink_that_stops_being_ready_in_relay_gets_the_rest_once_resumed() -> None:
    """As the relay's pump does when a send to the client must wait: what arrives meanwhile
    waits in the connection, and is relayed in order (the end after it) on `resume_push`."""
    events = [CHUNK % i for i in range(4)] + [FINISH, DONE]

    class Stalling(Sink):
        def relay(self, data: bytes) -> None:
            super().relay(data)
            self.ready = False

    async def main() -> tuple[list[bytes], list[bytes], Exception | None]:
        async with _opened(events) as stream:
            sink = Stalling()
            assert stream.push(sink)
            await asyncio.sleep(0.2)  # the whole answer has arrived by now
            held = list(sink.got)
            assert not sink.ended.done()
            while not sink.ended.done():
                sink.ready = True
                stream.resume_push()
            error = await asyncio.wait_for(sink.ended, 5)
            return held, sink.got, error

    held, got, error = asyncio.run(main())
    assert held == [CHUNK % 0]
    assert error is None and b"".join(got) == b"".join(events)


def test_a_connection_broken_mid_body_ends_the_push_with_the_error_after_the_events() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        for i in range(2):
            event = CHUNK % i
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
            await asyncio.sleep(0.005)
        writer.close()  # in the middle of the body

    async def main() -> tuple[Sink, Exception | None]:
        async with _served(handle) as stream:
            sink = Sink()
            assert stream.push(sink)
            return sink, await asyncio.wait_for(sink.ended, 5)

    sink, error = asyncio.run(main())
    assert b"".join(sink.got) == CHUNK % 0 + CHUNK % 1
    assert isinstance(error, UpstreamError)
