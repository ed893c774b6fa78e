"""The one HTTP client every provider shares: httpx's API over aiohttp's connections.

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
from collections.abc import AsyncIterator

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import AiohttpResponseStream

from gateway.config import GatewayConfig


def build_http_client(config: GatewayConfig) -> httpx.AsyncClient:
    """One pooled client for every provider. Timeouts are set per request by providers."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256, keepalive_expiry=30)
    transport: httpx.AsyncBaseTransport
    if config.upstream_transport == "httpx":
        transport = httpx.AsyncHTTPTransport(limits=limits)
    else:

        def session() -> aiohttp.ClientSession:
            # Built on first use, inside the running loop. limit=0: no cap on open upstream
            # connections, as `max_connections=None` says; aiohttp's default cap of 100 would
            # queue the 101st concurrent stream until another one ends.
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=limits.keepalive_expiry)
            return aiohttp.ClientSession(connector=connector, auto_decompress=False)

        transport = _FailFastTransport(client=session)
    return httpx.AsyncClient(
        timeout=httpx.Timeout(config.timeouts.connect, read=config.timeouts.first_token),
        limits=limits,
        transport=transport,
        follow_redirects=False,
        trust_env=False,
    )


class _FailFastBody(httpx.AsyncByteStream):
    """aiohttp's response body, failing instead of hanging when the connection dies mid-body.

    The connection's loss fails the reader with ClientPayloadError (httpx_aiohttp maps it to
    httpx.ReadError). One callback per response; reads go straight to aiohttp's iterator.
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
        return self._inner.__aiter__()

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
