"""Egress proxies for every transport: the native one's tunnels, the others' routing.

The proxies themselves (HTTPS_PROXY, HTTP_PROXY, NO_PROXY) are read once with the config
(`gateway.egress`); here they are used, the same way for all three transports, so
`NO_PROXY` means the same whatever `upstream_transport` says.

The native transport reaches an https origin through a `CONNECT host:port` tunnel, TLS then
spoken through it to the origin (`connect_through`); an http origin gets its requests in
absolute form (`POST http://host:port/path`, `gateway.transports.http11.encode`) sent to the
proxy, as curl, httpx and aiohttp send them. For httpx and aiohttp, `ProxyRouter` hands each
request to a transport built for its origin's proxy, or to the direct one. Neither library
reads the environment on its own (`trust_env` stays off for aiohttp; httpx's transports
never read it).

A proxy that cannot be reached or refuses fails the request with `httpx.ProxyError`, its
message naming the proxy without its credentials (`Proxy.shown`); the proxy's answer's body
is never relayed.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Callable
from typing import cast

import httpx

from gateway.egress import EgressProxies, Proxy
from gateway.transports.resolve import Resolver, connect_first

_MAX_PROXY_HEAD = 16 * 1024
"""The most a proxy's answer to CONNECT may take, status line and headers."""
_PROXY_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})[ \r]")


async def connect_through(
    proxy: Proxy,
    host: str,
    port: int,
    conn: asyncio.Protocol,
    context: ssl.SSLContext | None,
    seconds: float | None,
    resolver: Resolver,
) -> None:
    """Connect `conn` to `host:port` through `proxy`: to the proxy itself for an http origin
    (its requests are sent in absolute form), a CONNECT tunnel with TLS inside for an https
    one (`context`). The proxy's name is looked up by `resolver` (once for a burst of new
    connections, as an origin's). The timeout covers the whole setup."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(seconds):
            addresses = await resolver.to_try(loop, proxy.host, proxy.port)
            if context is None:
                await connect_first(loop, lambda: conn, addresses)
            else:
                tunnel = _TunnelOpener()
                raw, _ = await connect_first(loop, lambda: tunnel, addresses)
                try:
                    await tunnel.open(raw, proxy, host, port)
                    tls = await loop.start_tls(raw, conn, context, server_hostname=host)
                except BaseException:
                    raw.close()
                    raise
                if tls is None:  # the connection was lost during the handshake
                    raise ConnectionResetError("the tunnel closed during the TLS handshake")
                conn.connection_made(tls)  # start_tls does not call it
    except TimeoutError:
        raise httpx.ConnectTimeout(
            f"connecting to {host}:{port} through the egress proxy {proxy.shown} timed out"
        ) from None
    except ssl.SSLError as exc:  # the origin's TLS, not the proxy's doing
        raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
    except OSError as exc:
        raise httpx.ProxyError(
            f"cannot reach {host}:{port} through the egress proxy {proxy.shown}: {exc}"
        ) from exc


def proxy_refused(proxy: Proxy, target: str, status: int) -> httpx.ProxyError:
    """The error for a proxy's refusal: of a tunnel to `target`, or of a request to it in
    absolute form (407, which only a proxy answers). Its body is not relayed."""
    hint = " (check the credentials in the proxy URL)" if status in (401, 407) else ""
    return httpx.ProxyError(
        f"the egress proxy {proxy.shown} refused to reach {target} with status {status}{hint}"
    )


class _TunnelOpener(asyncio.Protocol):
    """Asks a proxy for a CONNECT tunnel and reads its answer's head (bounded); the
    connection is handed to TLS once the proxy said 200."""

    def __init__(self) -> None:
        self._head = bytearray()
        self._answered: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def open(
        self, transport: asyncio.BaseTransport, proxy: Proxy, host: str, port: int
    ) -> None:
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
        if (authorization := proxy.authorization) is not None:
            lines.append(f"Proxy-Authorization: {authorization}")
        cast(asyncio.Transport, transport).write(("\r\n".join(lines) + "\r\n\r\n").encode())
        status = await self._answered
        if status != 200:
            raise proxy_refused(proxy, authority, status)

    def data_received(self, data: bytes) -> None:
        if self._answered.done():
            return  # none come before TLS takes over: the origin waits for our hello
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > _MAX_PROXY_HEAD:
                self._fail(f"an answer to CONNECT longer than {_MAX_PROXY_HEAD} bytes")
            return
        if end + 4 != len(self._head):
            self._fail("bytes after its answer to CONNECT")
            return
        match = _PROXY_STATUS.match(self._head)
        if match is None:
            self._fail("an answer to CONNECT that is not HTTP")
            return
        self._answered.set_result(int(match[1]))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._answered.done():
            self._fail("no answer to CONNECT: it closed the connection")

    def _fail(self, problem: str) -> None:
        if not self._answered.done():
            self._answered.set_exception(httpx.ProxyError(f"the egress proxy sent {problem}"))


class ProxyRouter(httpx.AsyncBaseTransport):
    """Each request to the transport for its origin's egress proxy, or to the direct one.

    One transport per proxy, built by `via`, and the choice made once per origin (the
    origins are the configured providers'). A proxy that cannot be reached fails the request
    with httpx.ProxyError, as the native transport's and aiohttp's do (httpx's own says
    ConnectError)."""

    def __init__(
        self,
        egress: EgressProxies,
        via: Callable[[httpx.Proxy | None], httpx.AsyncBaseTransport],
    ) -> None:
        self._egress = egress
        self._via = via
        self._direct = via(None)
        self._proxied: dict[Proxy, httpx.AsyncBaseTransport] = {}
        self._routes: dict[
            tuple[str, str, int | None], tuple[Proxy | None, httpx.AsyncBaseTransport]
        ] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        route = self._routes.get((url.scheme, url.host, url.port))
        if route is None:
            route = self._route(url)
        proxy, transport = route
        if proxy is None:
            return await transport.handle_async_request(request)
        try:
            response = await transport.handle_async_request(request)
        except httpx.ConnectError as exc:
            if _tls_failure(exc):
                raise  # the origin's TLS, not the proxy's doing
            raise httpx.ProxyError(
                f"cannot reach {url.host} through the egress proxy {proxy.shown}"
            ) from exc
        if response.status_code == 407 and url.scheme == "http":
            # The proxy refused a request sent to it in absolute form (http origins); its
            # body is not read (tinyproxy resets the connection under it).
            await response.aclose()
            raise proxy_refused(proxy, url.host, 407)
        return response

    def _route(self, url: httpx.URL) -> tuple[Proxy | None, httpx.AsyncBaseTransport]:
        default = 443 if url.scheme == "https" else 80
        proxy = self._egress.route(url.scheme, url.host, url.port or default)
        transport = self._direct if proxy is None else self._proxied.get(proxy)
        if transport is None:
            assert proxy is not None
            transport = self._proxied[proxy] = self._via(_httpx_proxy(proxy))
        route = self._routes[url.scheme, url.host, url.port] = (proxy, transport)
        return route

    async def aclose(self) -> None:
        for transport in (self._direct, *self._proxied.values()):
            await transport.aclose()


def _httpx_proxy(proxy: Proxy) -> httpx.Proxy:
    auth = (proxy.username, proxy.password) if proxy.authorization is not None else None
    return httpx.Proxy(proxy.shown, auth=auth)


def _tls_failure(exc: BaseException) -> bool:
    """Whether a connect error was the TLS handshake failing (somewhere in its causes: the
    aiohttp transport's errors keep aiohttp's, which keep the `ssl.SSLError`)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
