"""httpx's own transport (httpcore's pool): `upstream_transport: httpx`.

Kept to compare against: httpx's pool re-checks every open connection on each request
(encode/httpx#3215), which at hundreds of concurrent streams costs most of the gateway's CPU
(docs/performance.md). Its exceptions are httpx's already. Deliberately not here: proxy
routing (`gateway.transports.proxy`): httpx's transports never read the environment, and a
proxy is given to each transport the router builds.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx


def httpx_transports(
    max_idle: int, keepalive_s: float
) -> Callable[[httpx.Proxy | None], httpx.AsyncBaseTransport]:
    """A factory of transports, one per egress proxy (None: direct); each has its own pool."""
    limits = httpx.Limits(
        max_connections=None, max_keepalive_connections=max_idle, keepalive_expiry=keepalive_s
    )

    def via(proxy: httpx.Proxy | None) -> httpx.AsyncBaseTransport:
        return _HTTPXTransport(limits=limits, proxy=proxy)

    return via


class _HTTPXTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport, its responses knowing their request as the others' do."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        response.request = request
        return response
