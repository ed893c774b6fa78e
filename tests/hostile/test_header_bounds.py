"""A client's request head is bounded, through the real server: too many header fields, a
field or target too long, or a head past `max_header_bytes` gets 431 (414 for the target) in
OpenAI's error shape and a closed connection, and costs the gateway neither memory nor time.

llhttp bounds none of these itself, and httptools joins a field's pieces with `bytes +=`:
before these bounds a 1 MiB field was answered 200, and one connection streaming a header
line for ever held a core and grew the process while /healthz waited seconds.

Requests go out on raw sockets: an HTTP client library may refuse to send such heads.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.hostile.hostile_support import Probe, error_of
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway_proc import KEY_A, GatewayProcess, test_config

KIB = 1024
MIB = 1024 * KIB


def exchange(port: int, request: bytes) -> tuple[int, bytes, bytes]:
    """Send one request (as much of it as the server takes) and read the answer: status,
    head, body. A server that stops reading and closes may reset the connection while the
    request is still going out; what it answered before that is still read."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    head, _, body = data.partition(b"\r\n\r\n")
    if not head:
        return 0, b"", b""
    return int(head.split(b" ", 2)[1]), head.lower(), body


def get(target: bytes, fields: list[bytes]) -> bytes:
    lines = [b"GET " + target + b" HTTP/1.1", b"Host: gw", b"Connection: close", *fields]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def assert_refused(answer: tuple[int, bytes, bytes], status: int, says: str) -> None:
    got, head, body = answer
    assert got == status, (got, head, body[:300])
    assert b"connection: close" in head
    error = error_of(body)
    assert error["type"] == "invalid_request_error"
    assert says in error["message"], error


@pytest.fixture(scope="module")
def bounds_gateway(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    with GatewayProcess(test_config(upstream.url), tmp_path_factory.mktemp("heads")) as proc:
        yield proc


@pytest.fixture(scope="module")
def probe(bounds_gateway: GatewayProcess) -> Iterator[Probe]:
    probe = Probe(bounds_gateway)
    yield probe
    probe.close()


@pytest.mark.parametrize(
    ("request_bytes", "status", "says"),
    [
        (get(b"/healthz", [b"X-Big: " + b"a" * MIB]), 431, "head is over 65536 bytes"),
        (get(b"/healthz", [b"X-Big: " + b"a" * 20 * KIB]), 431, "header field is over 16384"),
        (get(b"/healthz", [b"A" * 20 * KIB + b": 1"]), 431, "header field is over 16384"),
        (get(b"/healthz", [b"X-%d: 1" % i for i in range(101)]), 431, "more than 100 header"),
        (get(b"/healthz?" + b"q" * 20 * KIB, []), 414, "target is over 16384"),
        (get(b"/" + b"p" * MIB, []), 431, "head is over 65536 bytes"),
    ],
    ids=["1MiB-field", "20KiB-value", "20KiB-name", "101-fields", "20KiB-target", "1MiB-target"],
)
def test_a_head_past_a_bound_gets_a_431_in_openai_shape(
    bounds_gateway: GatewayProcess, probe: Probe, request_bytes: bytes, status: int, says: str
) -> None:
    assert_refused(exchange(bounds_gateway.port, request_bytes), status, says)
    probe.assert_still_serving()


def test_heads_within_the_bounds_are_served(bounds_gateway: GatewayProcess) -> None:
    port = bounds_gateway.port
    hundred = [b"X-%d: 1" % i for i in range(98)]  # and Host, Connection
    assert exchange(port, get(b"/healthz", hundred))[0] == 200
    assert exchange(port, get(b"/healthz", [b"X-Big: " + b"a" * 16000]))[0] == 200
    # Four fields of 15 KiB: a 60 KiB head, each field within its bound.
    big = [b"X-%d: " % i + b"a" * 15 * KIB for i in range(4)]
    assert exchange(port, get(b"/healthz", big))[0] == 200
    assert exchange(port, get(b"/healthz?" + b"q" * 16000, []))[0] == 200


def test_a_chat_request_with_big_headers_within_the_bounds_still_streams(
    bounds_gateway: GatewayProcess,
) -> None:
    headers = {"authorization": f"Bearer {KEY_A}", "x-pad": "p" * 15 * KIB}
    body = {"model": "mock-gpt", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(timeout=10) as client:
        answer = client.post(
            bounds_gateway.url + "/v1/chat/completions", json=body, headers=headers
        )
    assert answer.status_code == 200, answer.text
    assert answer.text.rstrip().endswith("data: [DONE]")


class EndlessHeader(threading.Thread):
    """One connection sending a header line of up to `limit` bytes, 64 KiB a write, until
    the server closes it; `sent` says how much went out."""

    def __init__(self, port: int, limit: int, prefix: bytes) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.limit = limit
        self.prefix = prefix
        self.sent = 0
        self.cut_off = False

    def run(self) -> None:
        piece = b"a" * 64 * KIB
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            try:
                sock.sendall(self.prefix)
                while self.sent < self.limit:
                    sock.sendall(piece)
                    self.sent += len(piece)
            except OSError:
                self.cut_off = True


@pytest.mark.parametrize(
    "prefix",
    [
        b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Endless: ",
        # After the last chunk: a trailer field that never ends.
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\n{}\r\n0\r\nX-Endless: ",
    ],
    ids=["header", "trailer"],
)
def test_an_endless_header_is_cut_off_at_the_bound_and_healthz_stays_fast(
    bounds_gateway: GatewayProcess, probe: Probe, prefix: bytes
) -> None:
    assert bounds_gateway.proc is not None
    gateway = psutil.Process(bounds_gateway.proc.pid)
    rss_before = gateway.memory_info().rss
    attacker = EndlessHeader(bounds_gateway.port, 64 * MIB, prefix)
    waits: list[float] = []
    with httpx.Client(base_url=bounds_gateway.url, timeout=30) as client:
        client.get("/healthz")  # the connection is made before the clock runs
        attacker.start()
        while True:  # at least once: cut off at once, the attacker may be gone already
            started = time.perf_counter()
            assert client.get("/healthz").status_code == 200
            waits.append(time.perf_counter() - started)
            if not attacker.is_alive():
                break
        attacker.join()
    rss_growth = gateway.memory_info().rss - rss_before
    # Loopback socket buffers take a few MiB the gateway never reads; before the bound the
    # gateway read all 64 MiB.
    assert attacker.cut_off and attacker.sent < 16 * MIB, attacker.sent
    assert max(waits) < 0.5, f"/healthz waited up to {max(waits):.2f} s"
    assert rss_growth < 16 * MIB, f"RSS grew by {rss_growth / MIB:.1f} MiB"
    probe.assert_still_serving()


def test_max_header_bytes_sets_the_head_bound(upstream: FakeUpstream, tmp_path: Path) -> None:
    config = test_config(upstream.url, max_header_bytes=4096)
    with GatewayProcess(config, tmp_path) as proc:
        fields = [b"X-%d: " % i + b"a" * 1000 for i in range(5)]
        assert_refused(exchange(proc.port, get(b"/healthz", fields)), 431, "over 4096 bytes")
        assert exchange(proc.port, get(b"/healthz", fields[:3]))[0] == 200


# --- the upstream's side: the native transport's response heads ------------------------------


class EndlessUpstream:
    """A raw upstream in its own thread: answers each request with `start`, then writes
    `piece` for ever (up to 64 MiB a connection) while the gateway reads. `sent` holds what
    each connection wrote."""

    def __init__(self, start: bytes, piece: bytes) -> None:
        self.start = start
        self.piece = piece
        self.sent: list[int] = []
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def __enter__(self) -> EndlessUpstream:
        self._thread.start()
        assert self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        total = 0
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            writer.write(self.start)
            total = len(self.start)
            while total < 64 * MIB:
                writer.write(self.piece)
                total += len(self.piece)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.sent.append(total)
            writer.close()


SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)
EVENT = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m",' + (
    b'"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}\n\n'
)


@pytest.mark.parametrize(
    ("start", "piece", "status"),
    [
        (b"HTTP/1.1 200 OK\r\n", b"x-more: " + b"a" * 1000 + b"\r\n", 502),
        (b"HTTP/1.1 200 OK\r\nx-endless: ", b"a" * 4096, 502),
        # After the first event: trailers that never end.
        (
            SSE_HEAD + b"%x\r\n%s\r\n0\r\n" % (len(EVENT), EVENT),
            b"x-t: " + b"a" * 1000 + b"\r\n",
            200,
        ),
    ],
    ids=["header-lines", "header-line", "trailer-lines"],
)
def test_an_upstream_head_that_never_ends_is_a_quick_upstream_error(
    tmp_path: Path, start: bytes, piece: bytes, status: int
) -> None:
    with EndlessUpstream(start, piece) as endless:
        config = test_config(f"http://127.0.0.1:{endless.port}")
        with GatewayProcess(config, tmp_path) as proc:
            assert proc.proc is not None
            gateway = psutil.Process(proc.proc.pid)
            rss_before = gateway.memory_info().rss
            body = {
                "model": "gpt-test",
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
            }
            started = time.perf_counter()
            with httpx.Client(timeout=30) as client:
                answer = client.post(
                    proc.url + "/v1/chat/completions",
                    json=body,
                    headers={"authorization": f"Bearer {KEY_A}"},
                )
            took = time.perf_counter() - started
            rss_growth = gateway.memory_info().rss - rss_before
            probe = Probe(proc)
            try:
                probe.assert_still_serving()
            finally:
                probe.close()
    assert answer.status_code == status, answer.text
    if status == 200:  # the stream had started: its last event is the error
        last = answer.text.strip().rsplit("data: ", 1)[1]
        error = error_of(last.encode())
    else:
        error = error_of(answer.content)
    assert error["code"] == "upstream_error", error
    assert "malformed HTTP response" in error["message"], error
    # Loopback socket buffers take a few MiB the gateway never reads; before the bound it read
    # all 64 MiB of each attempt, growing by hundreds of MiB.
    assert endless.sent and max(endless.sent) < 16 * MIB, endless.sent
    assert rss_growth < 16 * MIB, f"RSS grew by {rss_growth / MIB:.1f} MiB"
    assert took < 5, f"the answer took {took:.1f} s"
