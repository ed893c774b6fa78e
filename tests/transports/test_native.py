"""The native upstream transport (`gateway.transports.native`) against real sockets: a fake
upstream on 127.0.0.1 writes crafted HTTP bytes and counts the connections it accepted and
the ones the client closed.

What is checked is what the relay relies on: bodies handed over as they arrive (never
buffered whole), connections kept alive only when the answer allows it and closed when a body
is abandoned, httpx's exception classes for every failure (a failure is raised, never a hang),
requests on the wire as httpx built them, TLS, and a slow reader that pauses the socket
without losing a byte. Every test runs on the default loop and on uvloop, whose transports
are not asyncio's classes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import gzip
import random
import socket
import ssl
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from gateway.transports import http11, native
from gateway.transports.native import NativeTransport
from tests.support.loops import Run, self_signed
from tests.support.loops import run as run  # the fixture, used by name

pytestmark = pytest.mark.timeout(15)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

OK = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nhello"
CHUNKED_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)


class Upstream:
    """A fake upstream on 127.0.0.1: each connection runs `handler`. It counts the
    connections it accepted and those the client hung up (EOF or reset seen by the server)."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.accepted = 0
        self.hung_up = 0
        self.port = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Upstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.handler(reader, writer)
            if reader.at_eof():
                self.hung_up += 1
        except ConnectionError:
            self.hung_up += 1
        except asyncio.CancelledError:
            pass  # __aexit__ ended it; asyncio would log a handler that ends cancelled
        finally:
            writer.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request's bytes, head and (content-length) body; b"" once the client hung up."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
        return b""
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


async def until_eof(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


def answering(response: bytes, seen: list[bytes] | None = None) -> Handler:
    """Answers every request on a connection with `response` until the client hangs up."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while request := await read_request(reader):
            if seen is not None:
                seen.append(request)
            writer.write(response)
            await writer.drain()

    return handle


def post(
    url: str, body: bytes = b'{"model":"m"}', *, read: float | None = None, connect: float = 5.0
) -> httpx.Request:
    """A request built the way the providers build theirs."""
    return httpx.Request(
        "POST",
        url,
        content=body,
        headers={"content-type": "application/json"},
        extensions={"timeout": {"connect": connect, "read": read}},
    )


async def fetch(transport: NativeTransport, url: str) -> tuple[int, bytes]:
    response = await transport.handle_async_request(post(url))
    return response.status_code, await response.aread()


async def eventually(check: Callable[[], bool]) -> None:
    """Until `check()` holds, giving the loop turns (the scenario's guard bounds the wait)."""
    while not check():  # noqa: ASYNC110 (the transport's state has no event to wait on)
        await asyncio.sleep(0.005)


def connection_of(response: httpx.Response) -> http11.Connection:
    conn = cast(native.NativeBody, response.stream)._conn
    assert conn is not None
    return conn


# --- bodies -----------------------------------------------------------------------------------


def test_a_content_length_body(run: Run) -> None:
    async def scenario() -> None:
        transport = NativeTransport()
        async with Upstream(answering(OK)) as upstream:
            response = await transport.handle_async_request(post(upstream.url))
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/plain"
            assert response.http_version == "HTTP/1.1"
            assert await response.aread() == b"hello"
            await transport.aclose()

    run(scenario())


def test_a_chunked_body_is_handed_over_as_it_arrives(run: Run) -> None:
    """Each chunk is sent only once the client waits for it: a read that needed more than
    what had arrived (the whole body, say) would never return."""

    async def scenario() -> None:
        go = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while await read_request(reader):
                writer.write(CHUNKED_HEAD)
                for chunk in (b"5\r\nhello\r\n", b"6\r\n world\r\n", b"0\r\n\r\n"):
                    await go.wait()
                    go.clear()
                    writer.write(chunk)
                    await writer.drain()

        transport = NativeTransport()
        async with Upstream(handle) as upstream:
            for _ in range(2):
                response = await transport.handle_async_request(post(upstream.url))
                reads = response.aiter_raw()
                for expected in (b"hello", b" world"):
                    read = asyncio.ensure_future(anext(reads))
                    await asyncio.sleep(0.01)
                    assert not read.done()  # nothing sent yet
                    go.set()
                    assert await read == expected
                go.set()
                assert [part async for part in reads] == []
            assert upstream.accepted == 1
            await transport.aclose()

    run(scenario())


def test_a_body_without_a_length_ends_when_the_server_closes(run: Run) -> None:
    async def scenario() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil ")
            await writer.drain()
            await asyncio.sleep(0.02)
            writer.write(b"the end")
            await writer.drain()
            writer.close()

        transport = NativeTransport()
        async with Upstream(handle) as upstream:
            response = await transport.handle_async_request(post(upstream.url))
            assert await response.aread() == b"until the end"
            assert transport._idle_count == 0
            await eventually(lambda: not transport._open)
            await transport.aclose()

    run(scenario())


# --- the pool ----------------------------------------------------------------------------------


def test_sequential_requests_share_one_connection(run: Run) -> None:
    async def scenario() -> None:
        transport = NativeTransport()
        async with Upstream(answering(OK)) as upstream:
            for _ in range(3):
                assert await fetch(transport, upstream.url) == (200, b"hello")
            assert upstream.accepted == 1
            assert transport._idle_count == 1
            await transport.aclose()

    run(scenario())


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\nhello",
        b"HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\nhello",
    ],
    ids=["connection-close", "http-1.0"],
)
def test_an_answer_that_does_not_keep_the_connection_alive(run: Run, answer: bytes) -> None:
    async def scenario() -> None:
        transport = NativeTransport()
        async with Upstream(answering(answer)) as upstream:
            for _ in range(2):
                assert await fetch(transport, upstream.url) == (200, b"hello")
                assert transport._idle_count == 0
            assert upstream.accepted == 2
            await eventually(lambda: upstream.hung_up == 2)  # the client closed both
            await transport.aclose()

    run(scenario())


def test_a_closed_connection_is_freed_with_its_socket_not_left_to_the_collector(run: Run) -> None:
    """A connection's parser calls its methods back: unless it lets go of the parser when the
    socket closes, every closed connection (its transport, futures and lists) waits for a
    full collection, which under load comes seldom."""

    async def scenario() -> None:
        transport = NativeTransport()
        answer = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\nhello"
        async with Upstream(answering(answer)) as upstream:
            response = await transport.handle_async_request(post(upstream.url))
            conn = weakref.ref(connection_of(response))
            assert await response.aread() == b"hello"
            del response
            await eventually(lambda: not transport._open)
            for _ in range(3):
                await asyncio.sleep(0)  # the loop lets go of the closed socket
            assert conn() is None
            await transport.aclose()

    gc.collect()
    gc.disable()  # freed by reference counting alone, or not at all
    try:
        run(scenario())
    finally:
        gc.enable()


def test_an_idle_connection_the_server_closed_is_not_handed_out(run: Run) -> None:
    async def scenario() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(OK)
            await writer.drain()
            writer.close()  # keep-alive promised, then closed while idle

        transport = NativeTransport()
        async with Upstream(handle) as upstream:
            assert await fetch(transport, upstream.url) == (200, b"hello")
            await eventually(lambda: not transport._open)
            assert transport._idle_count == 0
            assert await fetch(transport, upstream.url) == (200, b"hello")
            assert upstream.accepted == 2
            await transport.aclose()

    run(scenario())


def test_idle_connections_expire(run: Run) -> None:
    async def scenario() -> None:
        transport = NativeTransport(keepalive_expiry=0.1)
        async with Upstream(answering(OK)) as upstream:
            await fetch(transport, upstream.url)
            await fetch(transport, upstream.url)
            assert upstream.accepted == 1
            await asyncio.sleep(0.15)
            assert await fetch(transport, upstream.url) == (200, b"hello")
            assert upstream.accepted == 2
            await eventually(lambda: upstream.hung_up == 1)  # the expired one was closed
            assert len(transport._open) == 1
            await transport.aclose()

    run(scenario())


def test_at_most_max_keepalive_connections_stay_idle(run: Run) -> None:
    async def scenario() -> None:
        arrived = 0
        both = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal arrived
            while await read_request(reader):
                arrived += 1
                if arrived == 2:
                    both.set()
                await both.wait()  # answer only once both requests are in flight
                writer.write(OK)
                await writer.drain()

        transport = NativeTransport(max_keepalive=1)
        async with Upstream(handle) as upstream:
            results = await asyncio.gather(*(fetch(transport, upstream.url) for _ in range(2)))
            assert results == [(200, b"hello")] * 2
            assert upstream.accepted == 2
            assert transport._idle_count == 1
            assert sum(len(idle) for idle in transport._idle.values()) == 1
            await eventually(lambda: upstream.hung_up == 1)
            assert len(transport._open) == 1
            await transport.aclose()

    run(scenario())


def test_closing_a_body_before_its_end_closes_the_connection(run: Run) -> None:
    async def scenario() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while await read_request(reader):
                writer.write(CHUNKED_HEAD + b"5\r\nhello\r\n")
                await writer.drain()

        transport = NativeTransport()
        async with Upstream(handle) as upstream:
            response = await transport.handle_async_request(post(upstream.url))
            assert await anext(response.aiter_raw()) == b"hello"
            await response.aclose()
            await eventually(lambda: upstream.hung_up == 1)
            assert transport._idle_count == 0
            await eventually(lambda: not transport._open)
            response = await transport.handle_async_request(post(upstream.url))
            assert upstream.accepted == 2
            await response.aclose()
            await transport.aclose()

    run(scenario())


def test_a_body_read_to_the_end_then_closed_keeps_the_connection(run: Run) -> None:
    async def scenario() -> None:
        transport = NativeTransport()
        async with Upstream(answering(OK)) as upstream:
            response = await transport.handle_async_request(post(upstream.url))
            assert [part async for part in response.aiter_raw()] == [b"hello"]
            await response.aclose()
            assert transport._idle_count == 1
            assert await fetch(transport, upstream.url) == (200, b"hello")
            assert upstream.accepted == 1
            assert upstream.hung_up == 0
            await transport.aclose()

    run(scenario())


# --- failures ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seen", [False, True], ids=["read-while-open", "read-after-close"])
def test_the_server_closing_mid_body_fails_the_read(run: Run, seen: bool) -> None:
    """Whether the client already waits for the rest or only reads after the connection was
    lost, the read fails (a body must never look complete when it was cut)."""

    async def scenario() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.close()

        transport = NativeTransport()
        async with Upstream(handle) as upstream:
            response = await transport.handle_async_request(post(upstream.url))
            if seen:
                await eventually(lambda: not transport._open)
            reads = response.aiter_raw()
            assert await anext(reads) == b"hello"
            with pytest.raises(httpx.RemoteProtocolError, match="middle of the response body"):
                async with asyncio.timeout(1):
                    await anext(reads)
            await response.aclose()
            await transport.aclose()

    run(scenario())


def test_the_server_closing_before_it_answers(run: Run) -> None:
    async def scenario() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.close()

        transport = NativeTransport()
        async with Upstream(handle) as upstream:
            with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
                await transport.handle_async_request(post(upstream.url))
            await eventually(lambda: not transport._open)
            await transport.aclose()

    run(scenario())


@pytest.mark.parametrize(
    "garbage",
    [b"SSH-2.0-OpenSSH_9.6\r\n\r\n", b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n"],
    ids=["not-http", "bad-length"],
)
def test_a_malformed_answer(run: Run, garbage: bytes) -> None:
    async def scenario() -> None:
        transport = NativeTransport()
        async with Upstream(answering(garbage)) as upstream:
            with pytest.raises(native.MalformedResponse, match="malformed"):
                await transport.handle_async_request(post(upstream.url))
            await eventually(lambda: upstream.hung_up == 1)
            await eventually(lambda: not transport._open)
            await transport.aclose()

    run(scenario())


def test_connection_refused(run: Run) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connecting is refused

        async def scenario() -> None:
            transport = NativeTransport()
            with pytest.raises(httpx.ConnectError):
                await transport.handle_async_request(post(f"http://127.0.0.1:{port}/"))
            assert not transport._open
            await transport.aclose()

        run(scenario())


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A port whose accept queue is full: the kernel drops new SYNs, a connect hangs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(3):
                filler = socket.socket()
                fillers.append(filler)
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):  # in progress, or never
                    filler.connect(("127.0.0.1", port))
            time.sleep(0.05)  # the handshakes that will complete have
            yield port
        finally:
            for filler in fillers:
                filler.close()


def test_a_connect_timeout(run: Run, full_backlog: int) -> None:
    async def scenario() -> None:
        transport = NativeTransport()
        started = time.monotonic()
        with pytest.raises(httpx.ConnectTimeout):
            await transport.handle_async_request(
                post(f"http://127.0.0.1:{full_backlog}/", connect=0.2)
            )
        assert 0.15 < time.monotonic() - started < 2.5  # 0.2 s, not a hang
        assert not transport._open
        await transport.aclose()

    run(scenario())


def test_no_answer_within_the_read_timeout(run: Run) -> None:
    async def scenario() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            await until_eof(reader)  # never answers

        transport = NativeTransport()
        async with Upstream(handle) as upstream:
            started = time.monotonic()
            with pytest.raises(httpx.ReadTimeout):
                await transport.handle_async_request(post(upstream.url, read=0.2))
            assert 0.15 < time.monotonic() - started < 2.5  # 0.2 s, not a hang
            await eventually(lambda: upstream.hung_up == 1)  # the client closed it
            await eventually(lambda: not transport._open)
            await transport.aclose()

    run(scenario())


def test_a_stalled_body_times_out_between_reads(run: Run) -> None:
    async def scenario() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(CHUNKED_HEAD + b"5\r\nhello\r\n")
            await writer.drain()
            await until_eof(reader)  # and nothing more

        transport = NativeTransport()
        async with Upstream(handle) as upstream:
            response = await transport.handle_async_request(post(upstream.url, read=0.2))
            reads = response.aiter_raw()
            assert await anext(reads) == b"hello"
            started = time.monotonic()
            with pytest.raises(httpx.ReadTimeout):
                await anext(reads)
            assert 0.15 < time.monotonic() - started < 2.5  # 0.2 s, not a hang
            await response.aclose()
            await eventually(lambda: upstream.hung_up == 1)
            assert transport._idle_count == 0
            await transport.aclose()

    run(scenario())


def test_cancelling_the_wait_for_headers_closes_the_connection(run: Run) -> None:
    async def scenario() -> None:
        received = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            received.set()
            await until_eof(reader)

        transport = NativeTransport()
        async with Upstream(handle) as upstream:
            task = asyncio.create_task(transport.handle_async_request(post(upstream.url)))
            await received.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0)
            assert not transport._open
            assert transport._idle_count == 0
            await eventually(lambda: upstream.hung_up == 1)
            await transport.aclose()

    run(scenario())


def test_unsupported_requests(run: Run) -> None:
    async def scenario() -> None:
        transport = NativeTransport()
        for request in (
            httpx.Request("GET", "ftp://127.0.0.1/"),
            httpx.Request("HEAD", "http://127.0.0.1/"),
        ):
            with pytest.raises(httpx.UnsupportedProtocol):
                await transport.handle_async_request(request)
        assert not transport._open
        await transport.aclose()

    run(scenario())


# --- requests on the wire ----------------------------------------------------------------------


def test_the_request_goes_out_as_httpx_built_it(run: Run) -> None:
    async def scenario() -> None:
        seen: list[bytes] = []
        transport = NativeTransport()
        async with Upstream(answering(OK, seen)) as upstream:
            body = b'{"model":"m","stream":true}'
            request = httpx.Request(
                "POST",
                f"{upstream.url}/v1/messages?beta=true",
                content=body,
                headers={"x-api-key": "k", "content-type": "application/json"},
                extensions={"timeout": {"connect": 5.0, "read": None}},
            )
            response = await transport.handle_async_request(request)
            await response.aread()
            await fetch(transport, upstream.url)  # and the next one on the same connection
            assert seen == [
                b"POST /v1/messages?beta=true HTTP/1.1\r\n"
                b"Host: 127.0.0.1:%d\r\n"
                b"x-api-key: k\r\n"
                b"content-type: application/json\r\n"
                b"Content-Length: 27\r\n"
                b"\r\n"
                b'{"model":"m","stream":true}' % upstream.port,
                b"POST / HTTP/1.1\r\n"
                b"Host: 127.0.0.1:%d\r\n"
                b"content-type: application/json\r\n"
                b"Content-Length: 13\r\n"
                b"\r\n"
                b'{"model":"m"}' % upstream.port,
            ]
            await transport.aclose()

    run(scenario())


def test_a_streamed_request_body_is_sent_with_its_length(run: Run) -> None:
    async def scenario() -> None:
        async def parts() -> AsyncIterator[bytes]:
            yield b'{"model":'
            await asyncio.sleep(0)
            yield b'"m"}'

        seen: list[bytes] = []
        transport = NativeTransport()
        async with Upstream(answering(OK, seen)) as upstream:
            request = httpx.Request(
                "POST",
                f"{upstream.url}/v1",
                content=parts(),
                extensions={"timeout": {"connect": 5.0, "read": None}},
            )
            assert request.headers["transfer-encoding"] == "chunked"
            response = await transport.handle_async_request(request)
            assert await response.aread() == b"hello"
            assert seen == [
                b"POST /v1 HTTP/1.1\r\n"
                b"Host: 127.0.0.1:%d\r\n"
                b"content-length: 13\r\n"
                b"\r\n"
                b'{"model":"m"}' % upstream.port
            ]
            await transport.aclose()

    run(scenario())


# --- answers -----------------------------------------------------------------------------------


def test_informational_answers_are_skipped(run: Run) -> None:
    async def scenario() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while await read_request(reader):
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                await writer.drain()
                await asyncio.sleep(0.01)
                writer.write(b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>\r\n\r\n" + OK)
                await writer.drain()

        transport = NativeTransport()
        async with Upstream(handle) as upstream:
            for _ in range(2):
                response = await transport.handle_async_request(post(upstream.url))
                assert response.status_code == 200
                assert "link" not in response.headers
                assert response.headers["content-type"] == "text/plain"
                assert await response.aread() == b"hello"
            assert upstream.accepted == 1
            await transport.aclose()

    run(scenario())


def test_a_204_answer_completes_and_the_connection_is_reused(run: Run) -> None:
    async def scenario() -> None:
        transport = NativeTransport()
        async with Upstream(answering(b"HTTP/1.1 204 No Content\r\n\r\n")) as upstream:
            for _ in range(2):
                assert await fetch(transport, upstream.url) == (204, b"")
            assert upstream.accepted == 1
            await transport.aclose()

    run(scenario())


def test_a_gzip_answer_is_decoded_by_aread(run: Run) -> None:
    async def scenario() -> None:
        plain = b'{"choices":[{"message":{"content":"hi"}}]}' * 20
        packed = gzip.compress(plain)
        answer = b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n%s" % (
            len(packed),
            packed,
        )
        transport = NativeTransport()
        async with Upstream(answering(answer)) as upstream:
            assert await fetch(transport, upstream.url) == (200, plain)
            await transport.aclose()

    run(scenario())


# --- TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    return self_signed(tmp_path_factory.mktemp("tls"))


def server_context(cert: tuple[Path, Path]) -> ssl.SSLContext:
    ca, key = cert
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(ca, key)
    return context


def test_https_verified_against_the_given_context(run: Run, cert: tuple[Path, Path]) -> None:
    async def scenario() -> None:
        server = server_context(cert)
        trusting = NativeTransport(ssl_context=ssl.create_default_context(cafile=str(cert[0])))
        # A client context with no CA at all: it trusts nothing, whatever the system has.
        untrusting = NativeTransport(ssl_context=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
        async with Upstream(answering(OK), tls=server) as upstream:
            assert upstream.url.startswith("https://")
            for _ in range(2):
                assert await fetch(trusting, upstream.url) == (200, b"hello")
            assert upstream.accepted == 1
            with pytest.raises(httpx.ConnectError):
                await untrusting.handle_async_request(post(upstream.url))
            assert not untrusting._open
            await trusting.aclose()
            await untrusting.aclose()

    run(scenario())


# --- backpressure ------------------------------------------------------------------------------


@pytest.mark.parametrize("secure", [False, True], ids=["http", "https"])
def test_a_slow_reader_pauses_the_socket_and_gets_every_byte(
    run: Run, secure: bool, cert: tuple[Path, Path]
) -> None:
    """Over TLS too: the loops' TLS transports pause and resume on their own terms."""

    async def scenario() -> None:
        payload = random.Random(7).randbytes(16 * 1024 * 1024)
        sent = 0

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal sent
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(payload))
            for start in range(0, len(payload), 65536):
                writer.write(payload[start : start + 65536])
                await writer.drain()
                sent = start + 65536
            await until_eof(reader)

        transport = NativeTransport(ssl_context=ssl.create_default_context(cafile=str(cert[0])))
        async with Upstream(handle, tls=server_context(cert) if secure else None) as upstream:
            response = await transport.handle_async_request(post(upstream.url))
            conn = connection_of(response)
            await asyncio.sleep(0.2)  # not reading: the buffer fills, then the socket pauses
            assert conn._paused
            assert conn._buffered <= 2 * http11.HIGH_WATER
            assert sent < len(payload)  # the server is held back, not buffered in the client
            parts = [part async for part in response.aiter_raw()]
            assert b"".join(parts) == payload
            assert max(map(len, parts)) <= 2 * http11.HIGH_WATER
            assert transport._idle_count == 1
            await transport.aclose()

    run(scenario())


def test_a_body_that_paused_the_socket_leaves_a_connection_that_reads_again(run: Run) -> None:
    """The last byte of a body takes the buffer over the mark: reading is paused with the
    answer complete. The connection goes back to the pool and must read the next answer."""

    async def scenario() -> None:
        payload = bytes(http11.HIGH_WATER + 1)
        answer = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(payload), payload)
        transport = NativeTransport()
        async with Upstream(answering(answer)) as upstream:
            response = await transport.handle_async_request(post(upstream.url))
            conn = connection_of(response)
            await eventually(lambda: conn.complete)
            assert conn._paused
            assert await response.aread() == payload
            response = await transport.handle_async_request(post(upstream.url, read=1.0))
            assert await response.aread() == payload
            assert upstream.accepted == 1
            await transport.aclose()

    run(scenario())


# --- closing the transport ---------------------------------------------------------------------


def test_aclose_closes_idle_and_busy_connections(run: Run) -> None:
    async def scenario() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while request := await read_request(reader):
                if request.startswith(b"POST /slow "):
                    writer.write(CHUNKED_HEAD + b"5\r\nhello\r\n")  # and the rest never
                else:
                    writer.write(OK)
                await writer.drain()

        transport = NativeTransport()
        async with Upstream(handle) as upstream:
            busy = await transport.handle_async_request(post(f"{upstream.url}/slow"))
            assert await fetch(transport, upstream.url) == (200, b"hello")
            assert upstream.accepted == 2
            assert transport._idle_count == 1
            await transport.aclose()
            await eventually(lambda: upstream.hung_up == 2)
            assert not transport._open
            assert transport._idle_count == 0
            reads = busy.aiter_raw()
            assert await anext(reads) == b"hello"
            with pytest.raises(httpx.TransportError):
                await anext(reads)
            await busy.aclose()

    run(scenario())


# --- bounds on what the parser may hold ---------------------------------------------------------


def endless(start: bytes, piece: bytes, sent: list[int]) -> Handler:
    """Answers the first request with `start`, then `piece` over and over (up to 64 MiB) while
    the client reads; `sent` gets how many bytes went out."""

    # The pieces go out several to a write, at least 4 KiB: the same bytes, but a 14-byte
    # piece per write meant ~100,000 sends before the socket's buffer filled and the client
    # got a turn, 1.5-3.5 s of the scenario's 5 s on a busy box.
    batch = piece * -(-4096 // len(piece))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(start)
        total = len(start)
        try:
            while total < 64 << 20:
                writer.write(batch)
                total += len(batch)
                await writer.drain()
        finally:
            sent.append(total)

    return handle


@pytest.mark.parametrize(
    ("start", "piece", "says"),
    [
        (b"HTTP/1.1 200 OK\r\n", b"x-more: " + b"a" * 1000 + b"\r\n", "head over 102400 bytes"),
        (b"HTTP/1.1 200 OK\r\nx-endless: ", b"a" * 4096, "head over 102400 bytes"),
        (b"HTTP/1.1 200 OK", b" reason" * 1000, "head over 102400 bytes"),
        (b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 100 Continue\r\n\r\n", "head over"),
    ],
    ids=["lines", "one-line", "reason-phrase", "informational"],
)
def test_an_endless_head_fails_as_malformed_at_its_bound(
    run: Run, start: bytes, piece: bytes, says: str
) -> None:
    async def scenario() -> None:
        transport = NativeTransport()
        sent: list[int] = []
        async with Upstream(endless(start, piece, sent)) as upstream:
            with pytest.raises(native.MalformedResponse, match=says):
                await transport.handle_async_request(post(upstream.url, read=5))
            await eventually(lambda: bool(sent))
            # What loopback buffers took besides the bound; the gateway read no more.
            assert sent[0] < 16 << 20, sent
            await eventually(lambda: not transport._open)
            await transport.aclose()

    run(scenario())


@pytest.mark.parametrize(
    ("start", "piece", "says"),
    [
        (b"0\r\nx-trailer: ", b"a" * 4096, "more than 102400 bytes between two body parts"),
        (b"0\r\n", b"x-trailer: 1\r\n", "between two body parts|more than 256 header fields"),
        (b"5;ext=", b"e" * 4096, "more than 102400 bytes between two body parts"),
        (b"0" * 100, b"0" * 4096, "more than 102400 bytes between two body parts"),
    ],
    ids=["trailer-line", "trailer-lines", "chunk-extension", "chunk-size-zeros"],
)
def test_endless_chunk_framing_after_a_body_part_fails_the_body_read(
    run: Run, start: bytes, piece: bytes, says: str
) -> None:
    async def scenario() -> None:
        transport = NativeTransport()
        sent: list[int] = []
        head = CHUNKED_HEAD + b"5\r\nfirst\r\n"
        async with Upstream(endless(head + start, piece, sent)) as upstream:
            with pytest.raises(native.MalformedResponse, match=says):
                # The read with the head may already hold the framing past the bound.
                response = await transport.handle_async_request(post(upstream.url, read=5))
                async for _ in response.aiter_raw():
                    pass
            await eventually(lambda: bool(sent))
            assert sent[0] < 16 << 20, sent
            await transport.aclose()

    run(scenario())


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ([b"x-%d: 1" % i for i in range(257)], "more than 256 header fields"),
        ([b"x-big: " + b"a" * (16 * 1024 - 4)], "a header field over 16384 bytes"),
        ([b"a" * (16 * 1024) + b": 1"], "a header field over 16384 bytes"),
    ],
    ids=["257-fields", "long-value", "long-name"],
)
def test_a_head_past_a_field_bound_fails_as_malformed(
    run: Run, fields: list[bytes], says: str
) -> None:
    async def scenario() -> None:
        transport = NativeTransport()
        answer = b"HTTP/1.1 200 OK\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"
        async with Upstream(answering(answer + b"content-length: 0\r\n\r\n")) as upstream:
            with pytest.raises(native.MalformedResponse, match=says):
                await transport.handle_async_request(post(upstream.url))
            await eventually(lambda: not transport._open)
            await transport.aclose()

    run(scenario())


def test_heads_and_bodies_within_the_bounds_are_read_whole(run: Run) -> None:
    # 6 fields of 16 KiB less 5 bytes (a 96 KiB head), 256 fields with the trailer; then a
    # body of big chunks, so reads pass the head bound and are fed in parts.
    fields = [b"x-%d: " % i + b"a" * (16 * 1024 - 5 - len(b"x-%d" % i)) for i in range(6)]
    fields += [b"y-%d: 1" % i for i in range(248)]
    body = random.Random(4).randbytes(3 << 20)
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(part), part)
        for part in (body[i : i + 300_000] for i in range(0, len(body), 300_000))
    )
    head = b"HTTP/1.1 200 OK\r\n" + b"".join(f + b"\r\n" for f in fields)
    answer = head + b"transfer-encoding: chunked\r\n\r\n" + chunks + b"0\r\nx-t: 1\r\n\r\n"
    assert 96 * 1024 < len(head) < 100 * 1024

    async def scenario() -> None:
        transport = NativeTransport()
        async with Upstream(answering(answer)) as upstream:
            for _ in range(2):  # the second on the kept-alive connection
                response = await transport.handle_async_request(post(upstream.url))
                assert len(response.headers.raw) == 255
                assert await response.aread() == body
            assert upstream.accepted == 1
            await transport.aclose()

    run(scenario())


def test_trailers_in_the_read_of_the_head_do_not_join_its_fields(run: Run) -> None:
    # Found by tests/transports/test_native_vs_h11.py: the fields' list was handed over when the
    # whole read had been parsed, trailers included.
    answer = CHUNKED_HEAD + b"5\r\nhello\r\n0\r\nx-trailer: 1\r\n\r\n"

    async def scenario() -> None:
        transport = NativeTransport()
        async with Upstream(answering(answer)) as upstream:
            response = await transport.handle_async_request(post(upstream.url))
            assert await response.aread() == b"hello"
            assert "x-trailer" not in response.headers
            assert response.headers["transfer-encoding"] == "chunked"
            await transport.aclose()

    run(scenario())


class _Pool:
    def __init__(self) -> None:
        self.released: list[http11.Connection] = []

    def lost(self, conn: http11.Connection) -> None:
        pass

    def release(self, conn: http11.Connection) -> None:
        self.released.append(conn)


class _Socket:
    def __init__(self) -> None:
        self.paused = False

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def _answered(pool: _Pool, head: bytes) -> tuple[http11.Connection, _Socket, native.NativeBody]:
    """A connection whose answer's head (and what comes with it) was read from a fake
    socket: reads are fed with `data_received`, the loop plays no part."""
    conn = http11.Connection(pool, (b"http", "upstream", 80))
    sock = _Socket()
    conn.connection_made(sock)  # type: ignore[arg-type]
    conn._head = asyncio.get_running_loop().create_future()
    conn.data_received(head)
    return conn, sock, native.NativeBody(conn, None)


Heard = list[tuple[bytes, bool]]


def _listening(body: native.NativeBody) -> Heard:
    heard: Heard = []
    body.listen(lambda data, last: heard.append((data, last)))
    return heard


def test_took_last_says_whether_the_read_returned_ended_the_body() -> None:
    """`NativeBody.took_last`: true only after the read that brought the body's last bytes,
    with the end (what a push reader sends with the response's end); not after a read the
    end came after, whose end `read_nowait` says with None."""

    def answer(pool: _Pool, head: bytes) -> tuple[http11.Connection, native.NativeBody]:
        conn = http11.Connection(pool, (b"http", "upstream", 80))
        conn.connection_made(_Socket())  # type: ignore[arg-type]
        conn._head = asyncio.get_running_loop().create_future()
        conn.data_received(head)
        return conn, native.NativeBody(conn, None)

    async def scenario() -> list[tuple[bytes | None, bool]]:
        pool = _Pool()
        conn, body = answer(pool, CHUNKED_HEAD)
        seen: list[tuple[bytes | None, bool]] = []
        for data in (b"5\r\nhello\r\n", b"", b"6\r\n world\r\n0\r\n\r\n"):
            if data:
                conn.data_received(data)
            seen.append((body.read_nowait(), body.took_last))
        seen.append((body.read_nowait(), body.took_last))
        assert pool.released == [conn]
        # A body whose end comes on its own, after its last bytes.
        conn, body = answer(pool, CHUNKED_HEAD + b"5\r\nhello\r\n")
        seen.append((body.read_nowait(), body.took_last))
        conn.data_received(b"0\r\n\r\n")
        seen.append((body.read_nowait(), body.took_last))
        return seen

    assert asyncio.run(scenario()) == [
        (b"hello", False),
        (b"", False),
        (b" world", True),
        (None, True),
        (b"hello", False),
        (None, False),
    ]


def test_a_listener_is_handed_each_reads_bytes_and_the_end_with_the_last_of_them() -> None:
    """`NativeBody.listen`: once per socket read, all its body bytes (several chunks of it
    joined), taken: `read_nowait` finds nothing left. The read that ends the body says so
    with its bytes; an end that comes on its own is (b"", True), and `read_nowait` then
    says None and hands the connection back."""

    async def scenario() -> tuple[Heard, Heard, list[bytes | None], list[http11.Connection]]:
        pool = _Pool()
        conn, _, body = _answered(pool, CHUNKED_HEAD)
        heard = _listening(body)
        seen: list[bytes | None] = []
        conn.data_received(b"5\r\nhello\r\n")
        seen.append(body.read_nowait())
        conn.data_received(b"1\r\n \r\n5\r\nworld\r\n")
        conn.data_received(b"1\r\n!\r\n0\r\n\r\n")
        # The end on its own read.
        conn2, _, body2 = _answered(pool, CHUNKED_HEAD)
        heard2 = _listening(body2)
        conn2.data_received(b"5\r\nhello\r\n")
        conn2.data_received(b"0\r\n\r\n")
        seen.append(body2.read_nowait())
        return heard, heard2, seen, pool.released

    heard, heard2, seen, released = asyncio.run(scenario())
    assert heard == [(b"hello", False), (b" world", False), (b"!", True)]
    assert heard2 == [(b"hello", False), (b"", True)]
    assert seen == [b"", None]
    assert len(released) == 1  # the second: the first is for its reader's `aclose` to release


def test_bytes_wait_past_the_high_water_mark_while_no_listener_is_set() -> None:
    """A listener that cannot take more unsets itself: the reads after it wait unread and
    pause the socket past the mark, as for a pulling reader; `read_nowait` takes them and
    resumes reading, and only then may a listener be set again, which hears every read
    from there on, the end included. A listener takes every byte: none count towards the
    mark."""
    big = b"x" * (http11.HIGH_WATER // 2 + 1)
    part = b"%x\r\n%s\r\n" % (len(big), big)

    async def scenario() -> None:
        pool = _Pool()
        conn, sock, body = _answered(pool, CHUNKED_HEAD)
        heard = _listening(body)
        for _ in range(3):  # 1.5 times the mark, all handed over: never paused
            conn.data_received(part)
        assert heard == [(big, False)] * 3 and not sock.paused
        body.listen(None)
        conn.data_received(part)
        assert not sock.paused  # under the mark
        conn.data_received(part)
        assert sock.paused and len(heard) == 3
        with pytest.raises(RuntimeError):
            body.listen(lambda data, last: None)  # bytes wait: they would never be heard
        assert body.read_nowait() == big + big
        assert not sock.paused
        assert body.read_nowait() == b""
        heard = _listening(body)
        conn.data_received(b"5\r\nhello\r\n0\r\n\r\n")
        assert heard == [(b"hello", True)]

    asyncio.run(scenario())


def test_a_listener_hears_a_read_that_fails_with_its_bytes_then_the_failure() -> None:
    """A read whose body bytes come before malformed framing: the listener gets those bytes
    (nothing is lost), `read_nowait` then raises, and when the connection is gone the
    listener hears once more, with no bytes, and `read_nowait` raises the same error."""

    async def scenario() -> tuple[Heard, list[Exception]]:
        pool = _Pool()
        conn, _, body = _answered(pool, CHUNKED_HEAD)
        heard = _listening(body)
        raised: list[Exception] = []
        conn.data_received(b"5\r\nhello\r\nzz\r\n")
        assert heard == [(b"hello", False)]
        for lose in (True, False):
            try:
                body.read_nowait()
            except httpx.TransportError as exc:
                raised.append(exc)
            if lose:
                conn.connection_lost(None)  # what closing the socket brings
        return heard, raised

    heard, raised = asyncio.run(scenario())
    assert heard[0] == (b"hello", False)
    assert heard[1:] == [(b"", False)]
    assert len(raised) == 2 and raised[0] is raised[1]
    assert isinstance(raised[0], native.MalformedResponse)


def test_a_raw_field_is_found_by_its_lower_case_name_whatever_its_neighbours() -> None:
    """`FieldHeaders.raw`: names compared case-insensitively (fields of the same length as
    the name, and of other lengths, around it), several values joined as httpx joins
    them, None when there is none."""
    fields = [
        (b"X-Request-Id", b"req_1"),  # as long as "content-type", another name
        (b"Content-Type", b"text/event-stream"),
        (b"content-type-options", b"nosniff"),
        (b"Set-Cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
    ]
    headers = native.FieldHeaders([b"%s: %s" % field for field in fields])
    assert headers.raw(b"content-type") == b"text/event-stream"
    assert headers.raw(b"set-cookie") == b"a=1, b=2"
    assert headers.raw(b"x-request-id") == b"req_1"
    assert headers.raw(b"content-length") is None
    assert headers.raw(b"set-cookie") == httpx.Headers(fields)["set-cookie"].encode()


class _OpenTransport:
    """A connection's transport that is open until closed (no socket)."""

    def __init__(self) -> None:
        self.closed = False

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def test_the_pool_forgets_exactly_the_idle_connections_it_loses() -> None:
    """`lost` looks only for a connection that went idle (`Connection.pooled`): one closed
    while idle leaves the pool, one the full pool closed or one taken out leaves it as it
    was, and the count of idle connections stays right through all of it."""
    transport = NativeTransport(max_keepalive=2)
    origin = (b"http", "up.test", 80)

    def opened() -> http11.Connection:
        conn = http11.Connection(transport, origin, cast(asyncio.AbstractEventLoop, object()))
        conn.connection_made(cast(asyncio.Transport, _OpenTransport()))
        conn.reusable = True
        return conn

    a, b, c, d = opened(), opened(), opened(), opened()
    transport.release(a)
    transport.release(b)
    transport.lost(a)  # the server closed it while idle
    assert transport._idle[origin] == [b] and transport._idle_count == 1
    transport.release(c)
    transport.release(d)  # the pool is full: closed
    assert not d.pooled
    transport.lost(d)
    assert transport._idle[origin] == [b, c] and transport._idle_count == 2
    assert transport._take(origin) is c and not c.pooled
    transport.lost(c)  # closed while in use: not idle, nothing to forget
    assert transport._idle[origin] == [b] and transport._idle_count == 1
    transport.lost(b)
    assert transport._idle[origin] == [] and transport._idle_count == 0
    assert transport._take(origin) is None


@pytest.mark.parametrize(
    ("field", "framed"),
    [
        (b"transfer-encoding: chunked", True),
        (b"Transfer-Encoding: Chunked", True),
        (b"transfer-encoding: gzip, chunked", True),
        (b"content-length: 5", True),
        (b"transfer-encoding: identity", False),
        (b"x-other: 1", False),
    ],
)
def test_a_framed_body_is_told_from_one_the_close_ends(field: bytes, framed: bool) -> None:
    """A head that gives its body a length, or a transfer coding naming `chunked` anywhere in
    any case, frames it: the connection closing mid-body fails it. Any other body ends where
    the connection does. (Asked of the head's fields only when the connection closes.)"""

    async def scenario() -> tuple[bool, Exception | None]:
        conn = http11.Connection(_Pool(), (b"http", "upstream", 80))
        conn.connection_made(_Socket())  # type: ignore[arg-type]
        conn._head = asyncio.get_running_loop().create_future()
        conn.data_received(b"HTTP/1.1 200 OK\r\n%s\r\n\r\n" % field)
        conn.connection_lost(None)
        return conn.complete, conn.error

    complete, error = asyncio.run(scenario())
    assert complete is not framed
    assert (error is not None) is framed
