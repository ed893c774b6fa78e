"""The one HTTP transport every provider shares: httpx's types over aiohttp's connections.

Providers build their `httpx.Request`s and hand them straight to the transport (httpx's
public `AsyncBaseTransport` API), without an `httpx.AsyncClient` in between. A gateway that
only passes requests through needs none of what the client does per request (merging
default headers, cookies and params, extracting cookies, auth and redirect wrappers, a
bound stream), and must keep no state between requests: a shared cookie jar would store an
upstream's `Set-Cookie` (OpenAI's Cloudflare sets `__cf_bm`) and send it on every tenant's
later requests. aiohttp's session has a jar of its own; it gets a dummy one.

httpx's own pool re-checks every open connection on each request (encode/httpx#3215): at
500 concurrent streams it spent most of the gateway's CPU and timed streams out, where the
aiohttp transport (httpx-aiohttp) held up (README, "Performance"). `upstream_transport:
httpx` in the config switches back, e.g. to compare.

aiohttp 3.14 has one failure mode the gateway must not inherit: when a chunked body breaks
in the middle, it closes the socket but never fails the body read, which then waits for a
timeout. `_FailFastBody` turns the lost connection into a read error.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import AiohttpResponseStream

from gateway.config import GatewayConfig, ProviderConfig, Timeouts
from gateway.providers.native import NativeTransport

_DEFAULT_HEADERS = {
    "accept": "*/*",
    "accept-encoding": "gzip, deflate",
    "connection": "keep-alive",
    "user-agent": f"python-httpx/{httpx.__version__}",
}
"""httpx.AsyncClient's default headers, set on every request here: left out, each
transport adds its own or none (aiohttp offers br and zstd when their libraries are
installed, which httpx may not decode)."""


_JSON = {"content-type": "application/json"}
_MAX_IDLE = 1024
_KEEPALIVE_S = 30.0


class UpstreamRequests:
    """How a provider builds its upstream requests: headers encoded and timeouts made once.

    Header order decides who wins: the defaults, then the provider's own (`defaults`, e.g.
    an API version a config may pin differently), then the config's `headers`, then
    `auth` (the configured key). Streams ask for SSE, unencoded; plain calls take JSON.
    Streams are timed by the relay (first token, idle, total); a plain call by httpx.
    """

    def __init__(
        self,
        config: ProviderConfig,
        timeouts: Timeouts,
        *,
        defaults: Mapping[str, str] | None = None,
        auth: Mapping[str, str] | None = None,
    ) -> None:
        layers = [_DEFAULT_HEADERS, _JSON, defaults or {}, config.headers, auth or {}]
        # Names are case-insensitive: a config's "Authorization" replaces the default one.
        self._headers = {name.lower(): value for layer in layers for name, value in layer.items()}
        self._stream_timeout = httpx.Timeout(timeouts.connect, read=None).as_dict()
        self._call_timeout = httpx.Timeout(timeouts.connect, read=timeouts.first_token).as_dict()
        self._cache: dict[tuple[httpx.URL, bool], httpx.Headers] = {}

    def build(self, url: httpx.URL, content: bytes, *, stream: bool) -> httpx.Request:
        # `content=` would make httpx parse, encode and complete the headers on every
        # request (most of the cost of building one); a request given `stream=` takes its
        # headers as they are, so they are made whole here, once per URL, and only the
        # length is added. The body bytes are the same either way.
        headers = self._cache.get((url, stream))
        if headers is None:
            headers = self._cache[url, stream] = self._headers_for(url, stream)
        request = httpx.Request(
            "POST",
            url,
            headers=headers,
            stream=httpx.ByteStream(content),
            extensions={"timeout": self._stream_timeout if stream else self._call_timeout},
        )
        request.headers["content-length"] = str(len(content))
        return request

    def _headers_for(self, url: httpx.URL, stream: bool) -> httpx.Headers:
        headers = {"host": url.netloc.decode("ascii"), **self._headers}  # a config's own wins
        if stream:
            headers |= {"accept": "text/event-stream", "accept-encoding": "identity"}
        return httpx.Headers(headers)


def build_transport(config: GatewayConfig) -> httpx.AsyncBaseTransport:
    """One pooled transport for every provider; the app closes it. It has no default
    timeouts: providers set them on each request (`extensions={"timeout": ...}`)."""
    # Idle connections are kept up to the number a burst of concurrent streams opened: one
    # costs a socket, a new one costs a TCP and TLS handshake on the next stream's path.
    if config.upstream_transport == "native":
        return NativeTransport(max_keepalive=_MAX_IDLE, keepalive_expiry=_KEEPALIVE_S)
    if config.upstream_transport == "httpx":
        limits = httpx.Limits(
            max_connections=None, max_keepalive_connections=_MAX_IDLE, keepalive_expiry=_KEEPALIVE_S
        )
        return _HTTPXTransport(limits=limits)

    def session() -> aiohttp.ClientSession:
        # Built on first use, inside the running loop. limit=0: no cap on open upstream
        # connections, as for the other transports; aiohttp's default cap of 100 would
        # queue the 101st concurrent stream until another one ends. The dummy jar: the
        # default one keeps an upstream's cookies (for host names, not IP addresses).
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=_KEEPALIVE_S)
        return aiohttp.ClientSession(
            connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
        )

    return _FailFastTransport(client=session)


class _HTTPXTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport, its responses knowing their request as the aiohttp one's do."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        response.request = request
        return response


class _FailFastBody(httpx.AsyncByteStream):
    """aiohttp's response body, failing instead of hanging when the connection dies mid-body.

    The connection's loss fails the reader with ClientPayloadError. One callback per
    response; reads are aiohttp's own `iter_any` (what has arrived, one await per read), not
    httpx_aiohttp's async generator re-chunking into 16 KiB. Its errors are aiohttp's, which
    the providers map with `upstream_errors` as they do httpx's.
    """

    def __init__(self, inner: AiohttpResponseStream) -> None:
        self._inner = inner
        response = inner._aiohttp_response
        self._content = response.content
        connection = response.connection
        protocol = connection.protocol if connection is not None else None
        # `is not None`: aiohttp's protocol is a queue, falsy when empty.
        self._lost = protocol.closed if protocol is not None else None
        if self._lost is not None:
            self._lost.add_done_callback(self._fail)
        elif protocol is not None:
            self._fail(None)  # lost already, before the body was handed over

    def _fail(self, lost: asyncio.Future[None] | None) -> None:
        if lost is not None and not lost.cancelled():
            lost.exception()  # retrieved here; aiohttp reports the loss its own way
        content = self._content
        if not content.is_eof() and content.exception() is None:
            content.set_exception(
                aiohttp.ClientPayloadError("the upstream closed the connection mid-body")
            )

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._content.iter_any()

    async def aclose(self) -> None:
        if self._lost is not None:
            self._lost.remove_done_callback(self._fail)
        await self._inner.aclose()


class _FailFastTransport(AiohttpTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        assert isinstance(response.stream, AiohttpResponseStream)
        response.stream = _FailFastBody(response.stream)
        return response
