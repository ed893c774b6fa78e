"""A provider's stream over the native transport, sent as bytes and answered without
httpx's objects (`UpstreamRequests.stream`, `NativeTransport.send_raw`, `NativeResponse`):
the same bytes on the wire as the `httpx.Request` the other transports get, and the same
answers, errors and headers for the relay, against crafted upstream answers on a real
socket (both event loops)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import orjson
import pytest

from gateway.config import ModelConfig, ProviderConfig, Timeouts
from gateway.egress import EgressProxies
from gateway.errors import UpstreamError, UpstreamRejected
from gateway.providers.anthropic import AnthropicProvider
from gateway.providers.base import UpstreamCall
from gateway.providers.openai import OpenAIProvider, OpenAIStream
from gateway.providers.requests import UpstreamRequests
from gateway.providers.streams import SSEUpstream
from gateway.transports.http11 import encode
from gateway.transports.native import NativeBody, NativeRequest, NativeResponse, NativeTransport
from tests.support.loops import Run
from tests.support.loops import run as run  # the fixture, used by name

pytestmark = pytest.mark.timeout(15)

KEY = "sk-upstream-secret"
TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"x-ratelimit-remaining-requests: 41\r\nx-dup: a\r\nx-dup: b\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
CHUNK = b'data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}\n\n'


def _config(kind: str = "openai", url: str = "http://up.test:8080/v1") -> ProviderConfig:
    return ProviderConfig(
        name="up", type=kind, base_url=url, api_key=KEY, headers={"X-Team": "blue"}
    )


def _chunked(*events: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"


# --- the request's bytes --------------------------------------------------------------------


@pytest.mark.parametrize("traceparent", ["", TRACE])
def test_a_streams_bytes_are_what_its_httpx_request_would_send(traceparent: str) -> None:
    requests = UpstreamRequests(
        _config(), Timeouts(), auth={"authorization": f"Bearer {KEY}"}, transport=NativeTransport()
    )
    target = requests.target("http://up.test:8080/v1/chat/completions?x=1")
    content = orjson.dumps({"model": "m", "stream": True})
    raw = requests.stream(target, content, traceparent=traceparent)
    assert isinstance(raw, NativeRequest)
    assert raw.origin == (b"http", "up.test", 8080)
    assert raw.connect_timeout == Timeouts().connect
    assert raw.read_timeout is None
    built = requests.build(target.url, content, stream=True, traceparent=traceparent)
    assert raw.data == encode(built, content)
    assert b"accept: text/event-stream\r\n" in raw.data
    assert (b"traceparent: " in raw.data) == bool(traceparent)


def test_passed_headers_replace_the_same_named_fields_as_on_an_httpx_request() -> None:
    requests = UpstreamRequests(
        _config("anthropic"),
        Timeouts(),
        defaults={"anthropic-version": "2023-06-01"},
        transport=NativeTransport(),
    )
    target = requests.target("http://up.test:8080/v1/messages")
    # A client's header may carry any byte but CR and LF (read as latin-1 at the edge).
    extra = [("anthropic-version", "2024-01-01"), ("anthropic-beta", "tools,caf\xe9")]
    raw = requests.stream(target, b"{}", traceparent=TRACE, extra=extra)
    assert isinstance(raw, NativeRequest)
    built = requests.build(target.url, b"{}", stream=True, traceparent=TRACE)
    for name, value in extra:
        built.headers[name] = value
    head, _, body = raw.data.partition(b"\r\n\r\n")
    wanted_head, _, wanted_body = encode(built, b"{}").partition(b"\r\n\r\n")
    lines, wanted = head.split(b"\r\n"), wanted_head.split(b"\r\n")
    assert lines[0] == wanted[0] and body == wanted_body == b"{}"
    assert sorted(lines[1:]) == sorted(wanted[1:])  # the same fields (order aside)
    assert (
        b"anthropic-version: 2024-01-01" in lines and b"anthropic-version: 2023-06-01" not in head
    )
    # The cached head is not changed by one request's own fields.
    assert b"anthropic-beta" not in target.head and b"2023-06-01" in target.head


def test_requests_that_need_httpx_stay_httpx_requests() -> None:
    content = b"{}"
    # Another transport: no bytes, the same fields.
    other = UpstreamRequests(_config(), Timeouts(), transport=httpx.AsyncHTTPTransport())
    request = other.stream(other.target("http://up.test/v1/chat"), content, extra=[("a", "b")])
    assert isinstance(request, httpx.Request) and request.headers["a"] == "b"
    # An http origin behind a proxy names its target in absolute form: httpx's path.
    proxies = EgressProxies.from_env({"HTTP_PROXY": "http://127.0.0.1:3128"})
    proxied = UpstreamRequests(_config(), Timeouts(), transport=NativeTransport(proxies=proxies))
    assert isinstance(proxied.stream(proxied.target("http://up.test/v1"), content), httpx.Request)
    # Through the proxy's tunnel an https request's bytes are the same as without it.
    tls = proxied.stream(proxied.target("https://up.test/v1"), content)
    assert isinstance(tls, NativeRequest) and tls.origin == (b"https", "up.test", 443)


# --- answers, over a socket -----------------------------------------------------------------

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _writes(data: bytes, hold: bool = True) -> Answer:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        if hold:
            await reader.read()  # until the client closes

    return answer


def _call() -> UpstreamCall:
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    return UpstreamCall(
        route="chat.completions",
        body=body,
        model=ModelConfig(name="m", provider="up"),
        stream=True,
        include_usage=False,
        request_id="r",
        traceparent=TRACE,
    )


Opened = tuple[SSEUpstream | Exception, list[bytes], NativeTransport]


@contextlib.asynccontextmanager
async def _opened(answer: Answer, kind: str = "openai") -> AsyncIterator[Opened]:
    """A provider's stream opened against an upstream that reads the request and answers
    with `answer`: the stream (or what opening it raised), the requests the upstream read,
    the transport. Everything is closed on the way out."""
    seen: list[bytes] = []
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            seen.append(head + await reader.readexactly(length))
            await answer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    transport = NativeTransport()
    provider_class = OpenAIProvider if kind == "openai" else AnthropicProvider
    provider = provider_class(_config(kind, url), transport, Timeouts())
    result: SSEUpstream | Exception
    try:
        result = await provider.open_stream(_call())
    except Exception as exc:
        result = exc
    try:
        yield result, seen, transport
    finally:
        if isinstance(result, SSEUpstream):
            await result.aclose()
        await transport.aclose()
        if handlers:
            await asyncio.wait(handlers, timeout=2)  # they end once the client hung up
        server.close()
        await server.wait_closed()


def test_a_200_stream_is_read_from_the_raw_answer(run: Run) -> None:
    async def scenario() -> None:
        async with _opened(_writes(SSE_HEAD + _chunked(CHUNK))) as (stream, seen, _):
            assert isinstance(stream, SSEUpstream)
            assert type(stream._response) is NativeResponse  # no httpx.Response on this path
            headers = stream.state.upstream_headers
            assert headers is not None
            # Read as httpx.Headers (the router's upstream limiter reads them so).
            assert headers.get("X-RateLimit-Remaining-Requests") == "41"
            assert headers["x-dup"] == "a, b" and "content-type" in headers
            assert dict(headers.items())["x-dup"] == "a, b"
            assert [chunk async for chunk in stream] == [CHUNK]
            (request,) = seen
            assert b"authorization: Bearer %s\r\n" % KEY.encode() in request
            assert b"x-team: blue\r\n" in request
            assert b"traceparent: %s\r\n" % TRACE.encode() in request
            assert b'"include_usage":true' in request

    run(scenario())


def test_an_error_answer_is_read_as_on_the_httpx_path(run: Run) -> None:
    async def scenario() -> None:
        body = gzip.compress(b'{"error":{"message":"slow down","type":"rate_limit"}}')
        answer = (
            b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n"
            b"content-encoding: gzip\r\nretry-after: 7\r\ncontent-length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        async with _opened(_writes(answer)) as (error, _, _):
            assert isinstance(error, UpstreamRejected)
            assert error.status == 429 and error.message == "slow down"  # decoded, as httpx does
            assert error.upstream_headers == {"retry-after": "7"}

    run(scenario())


@pytest.mark.parametrize(
    ("head", "said"),
    [(b"content-type: application/json\r\n", "'application/json'"), (b"", "'none'")],
)
def test_a_200_that_is_not_a_stream_is_malformed(run: Run, head: bytes, said: str) -> None:
    async def scenario() -> None:
        answer = b"HTTP/1.1 200 OK\r\n%scontent-length: 2\r\n\r\n{}" % head
        async with _opened(_writes(answer)) as (error, _, transport):
            assert isinstance(error, UpstreamError) and error.kind == "malformed"
            assert f"a 200 answer of type {said}, not a stream" in error.message
            assert transport._idle_count == 0  # its unread answer's connection was closed

    run(scenario())


@pytest.mark.parametrize("whole", [True, False])
def test_closing_a_stream_gives_back_or_closes_its_connection(run: Run, whole: bool) -> None:
    # `SSEUpstream.aclose` closes the native answer's body itself: read to its end, the
    # connection goes back to the pool; closed before the end, it is closed.
    async def scenario() -> None:
        body = _chunked(CHUNK) if whole else b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK)
        async with _opened(_writes(SSE_HEAD + body)) as (stream, _, transport):
            assert isinstance(stream, SSEUpstream)
            assert isinstance(stream._response, NativeResponse)
            assert await stream.__anext__() == CHUNK  # the end came with it, when whole
            await stream.aclose()
            assert transport._idle_count == (1 if whole else 0)
            await stream.aclose()  # a second close does nothing
            assert transport._idle_count == (1 if whole else 0)
            for _ in range(100):  # the closed connection's end reaches the pool
                if len(transport._open) == (1 if whole else 0):
                    break
                await asyncio.sleep(0.01)
            assert len(transport._open) == (1 if whole else 0)

    run(scenario())


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_connection_closed_before_any_answer_is_retryable(run: Run, kind: str) -> None:
    # What a stale kept-alive connection looks like to the request: the relay retries it.
    async def scenario() -> None:
        async with _opened(_writes(b"", hold=False), kind) as (error, seen, _):
            assert isinstance(error, UpstreamError)
            assert error.kind == "connection" and error.retryable
            assert KEY not in error.message
            assert len(seen) == 1

    run(scenario())


def test_a_malformed_head_is_malformed(run: Run) -> None:
    async def scenario() -> None:
        answer = _writes(b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n")
        async with _opened(answer) as (error, _, _):
            assert isinstance(error, UpstreamError) and error.kind == "malformed"

    run(scenario())


def test_an_iterated_stream_waits_for_each_read_and_maps_a_broken_body(run: Run) -> None:
    # Iterated (the relay's first read): each event that comes later is waited for, and a
    # connection dropped mid-body is the gateway's error.
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD)
        for _ in range(2):
            await asyncio.sleep(0.02)
            writer.write(b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK))
            await writer.drain()
        await asyncio.sleep(0.02)
        writer.transport.abort()  # mid-body: no last chunk

    async def scenario() -> None:
        async with _opened(answer) as (stream, _, _):
            assert isinstance(stream, SSEUpstream)
            assert await stream.__anext__() == CHUNK
            assert await stream.__anext__() == CHUNK
            with pytest.raises(UpstreamError) as caught:
                await stream.__anext__()
            assert caught.value.kind == "connection" and caught.value.retryable

    run(scenario())


def test_a_chat_stream_gets_the_providers_settings_in_their_places(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`open_stream` makes a Chat client's stream with its arguments by position: each lands
    where it belongs (booleans swapped would pass unnoticed by most streams)."""

    async def answered(*_args: object, **_kw: object) -> NativeResponse:
        return NativeResponse(200, [], NativeBody(object(), None))  # type: ignore[arg-type]

    monkeypatch.setattr("gateway.providers.openai.open_event_stream", answered)
    provider = OpenAIProvider(
        _config(), NativeTransport(), Timeouts(), keep_text=False, max_event_bytes=4096
    )
    call = dataclasses.replace(_call(), include_usage=True)
    stream = asyncio.run(provider.open_stream(call))
    assert type(stream) is OpenAIStream
    assert stream.provider == "up"
    assert stream.include_usage is True and stream.keep_text is False
    assert stream._decoder.max_event_bytes == 4096
    assert stream._redact is provider._redact
    assert stream.state.scrub is not None  # the provider's key is scrubbed from kept text
    # The native body is its own iterator (taken without its `__aiter__`), read directly.
    assert stream._raw is stream._body is not None and stream._native
    assert stream._pending_error is None and stream._sink is None  # the class's defaults
    kept = OpenAIProvider(_config(), NativeTransport(), Timeouts(), keep_text=True)
    stream = asyncio.run(kept.open_stream(_call()))
    assert stream.include_usage is False and stream.keep_text is True
    assert stream._decoder.max_event_bytes == 1024 * 1024
