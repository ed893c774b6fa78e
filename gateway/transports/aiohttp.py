"""httpx's types over aiohttp's connections (httpx-aiohttp): `upstream_transport: aiohttp`.

httpx's own pool re-checks every open connection on each request (encode/httpx#3215): at
500 concurrent streams it spent most of the gateway's CPU and timed streams out, where this
transport held up (docs/performance.md). The native transport has since replaced it as
the default; it stays to compare, and for whoever trusts aiohttp's client more.

One session for every proxy (aiohttp pools connections per proxy and origin), with a dummy
cookie jar: the default one would keep an upstream's `Set-Cookie` (OpenAI's Cloudflare
sets `__cf_bm`) and send it on every tenant's later requests.

aiohttp 3.14 has one failure mode the gateway must not inherit: when a chunked body breaks
in the middle, it closes the socket but never fails the body read, which then waits for a
timeout. `_FailFastBody` turns the lost connection into a read error.

It raises only httpx's exceptions, as the other transports do: aiohttp's are mapped to
httpx's classes in one place, `_HTTPX_ERRORS`, for the request, each body read and the
close. httpx-aiohttp maps some of them itself, but to the wrong class for the gateway's
purpose (an upstream that hangs up becomes ConnectTimeout) and lets others through (a
malformed response); those are judged again by aiohttp's original error. Deliberately not
here: proxy routing (`gateway.transports.proxy`, shared with httpx's transport).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator

import aiohttp
import httpx
from aiohttp.http_exceptions import HttpProcessingError
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import AiohttpResponseStream

from gateway.transports.errors import MalformedResponse

_HTTPX_ERRORS: tuple[
    tuple[type[Exception] | tuple[type[Exception], ...], type[httpx.TransportError]], ...
] = (
    # Proxies first: aiohttp's proxy errors are a response error and a connector error.
    ((aiohttp.ClientHttpProxyError, aiohttp.ClientProxyConnectionError), httpx.ProxyError),
    # Timeouts before connection errors, which they are too.
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    ((aiohttp.ClientResponseError, HttpProcessingError), MalformedResponse),
    (aiohttp.ClientConnectorError, httpx.ConnectError),  # TLS failures included
    ((aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError), httpx.RemoteProtocolError),
    (aiohttp.ClientConnectionError, httpx.ReadError),
    ((aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError), httpx.UnsupportedProtocol),
    (aiohttp.ClientError, httpx.TransportError),
)
"""aiohttp's exception classes and httpx's for them; the first that matches wins."""


def httpx_error(exc: Exception) -> httpx.TransportError | None:
    """httpx's exception for one of aiohttp's (or for httpx-aiohttp's mapping of one, judged
    by aiohttp's original), its message aiohttp's; None for any other exception."""
    if isinstance(exc, httpx.TransportError):
        cause = exc.__cause__
        if not isinstance(cause, aiohttp.ClientError):
            return None
        exc = cause
    for aiohttp_class, httpx_class in _HTTPX_ERRORS:
        if isinstance(exc, aiohttp_class):
            return httpx_class(str(exc))
    return None


@contextlib.contextmanager
def _httpx_errors() -> Iterator[None]:
    try:
        yield
    except (aiohttp.ClientError, HttpProcessingError, httpx.TransportError) as exc:
        error = httpx_error(exc)
        if error is None:
            raise
        # Chained to aiohttp's error, which keeps its causes (the proxy router looks for
        # an ssl.SSLError there).
        raise error from (exc.__cause__ if isinstance(exc, httpx.TransportError) else exc)


def aiohttp_transports(
    keepalive_s: float,
) -> Callable[[httpx.Proxy | None], httpx.AsyncBaseTransport]:
    """A factory of transports, one per egress proxy (None: direct), sharing one session."""
    shared: list[aiohttp.ClientSession] = []

    def session() -> aiohttp.ClientSession:
        # Built on first use, inside the running loop. limit=0: no cap on open upstream
        # connections, as for the other transports; aiohttp's default cap of 100 would
        # queue the 101st concurrent stream until another one ends. The dummy jar: the
        # default one keeps an upstream's cookies (for host names, not IP addresses).
        if not shared:
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=keepalive_s)
            shared.append(
                aiohttp.ClientSession(
                    connector=connector,
                    auto_decompress=False,
                    cookie_jar=aiohttp.DummyCookieJar(),
                )
            )
        return shared[0]

    def via(proxy: httpx.Proxy | None) -> httpx.AsyncBaseTransport:
        return _FailFastTransport(client=session, proxy=proxy)

    return via


class _FailFastBody(httpx.AsyncByteStream):
    """aiohttp's response body, failing instead of hanging when the connection dies mid-body.

    The connection's loss fails the reader with ClientPayloadError. One callback per
    response; reads are aiohttp's own `readany` (what has arrived, one await per read), not
    httpx_aiohttp's async generator re-chunking into 16 KiB, and their errors are httpx's.
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

    def __aiter__(self) -> _FailFastBody:
        return self

    async def __anext__(self) -> bytes:
        # What aiohttp's `iter_any()` iterator does, with its errors mapped: a `try` costs
        # nothing until something is raised, where a context manager per read would.
        try:
            data = await self._content.readany()
        except (aiohttp.ClientError, HttpProcessingError) as exc:
            error = httpx_error(exc)
            assert error is not None  # every ClientError has its class
            raise error from exc
        if not data:
            raise StopAsyncIteration
        return data

    async def aclose(self) -> None:
        if self._lost is not None:
            self._lost.remove_done_callback(self._fail)
        with _httpx_errors():
            await self._inner.aclose()


class _FailFastTransport(AiohttpTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        with _httpx_errors():
            response = await super().handle_async_request(request)
        assert isinstance(response.stream, AiohttpResponseStream)
        response.stream = _FailFastBody(response.stream)
        return response
