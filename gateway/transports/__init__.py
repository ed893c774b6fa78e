"""Upstream transports: how the providers' `httpx.Request`s reach the network.

Providers build `httpx.Request`s and hand them straight to a transport (httpx's public
`AsyncBaseTransport` API), without an `httpx.AsyncClient` in between. A gateway that only
passes requests through needs none of what the client does per request (merging default
headers, cookies and params, extracting cookies, auth and redirect wrappers, a bound
stream), and must keep no state between requests: a shared cookie jar would send one
tenant's upstream cookie on another's requests. (Over the native transport a provider's
stream skips even those objects: `NativeTransport.send_raw`.)

One module per transport, chosen by `upstream_transport` in the config: `native` (the
default, the gateway's own HTTP/1.1 client), `aiohttp` (httpx-aiohttp) and `httpx`
(httpcore's pool). Each raises only httpx's exceptions, `MalformedResponse` included
(`gateway.transports.errors`), so the providers map one exception tree, whichever is
configured; none of them imports a provider. Egress proxies are routed the same way for
all three (`gateway.transports.proxy`).

The modules `aiohttp` and `httpx` are named for the library each wraps; this one imports
nothing by those names (importing a submodule sets it on its package, which would replace
the library's name here).
"""

from __future__ import annotations

from httpx import AsyncBaseTransport

from gateway.config import GatewayConfig
from gateway.transports.errors import MalformedResponse
from gateway.transports.native import NativeTransport
from gateway.transports.proxy import ProxyRouter

__all__ = ["MalformedResponse", "build_transport"]


def build_transport(config: GatewayConfig) -> AsyncBaseTransport:
    """One pooled transport for every provider; the app closes it. It has no default
    timeouts: providers set them on each request (`extensions={"timeout": ...}`)."""
    # Idle connections are kept up to `upstream_pool.max_idle`: one costs a socket, a new
    # one costs a TCP and TLS handshake on the next stream's path.
    egress = config.egress
    pool = config.upstream_pool
    if config.upstream_transport == "native":
        return NativeTransport(
            max_keepalive=pool.max_idle, keepalive_expiry=pool.idle_timeout, proxies=egress
        )
    if config.upstream_transport == "httpx":
        from gateway.transports.httpx import httpx_transports

        via = httpx_transports(pool.max_idle, pool.idle_timeout)
    else:
        from gateway.transports.aiohttp import aiohttp_transports

        via = aiohttp_transports(pool.idle_timeout)
    if not egress.active:
        return via(None)
    return ProxyRouter(egress, via)
