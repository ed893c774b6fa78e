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

Egress proxies (`gateway.egress`: HTTPS_PROXY, HTTP_PROXY, NO_PROXY, read once with the
config) are chosen per origin here, the same way for all three transports: the native one
routes by itself; for httpx and aiohttp `_ProxyRouter` hands each request to a transport
built for its origin's proxy, or to the direct one. Neither library reads the environment
on its own (`trust_env` stays off for aiohttp; httpx's transports never read it), so
`NO_PROXY` means the same whatever `upstream_transport` says.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable, Mapping

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import AiohttpResponseStream

from gateway.config import GatewayConfig, ProviderConfig, Timeouts
from gateway.egress import EgressProxies, Proxy
from gateway.providers.native import NativeTransport, proxy_refused

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
    egress = config.egress
    if config.upstream_transport == "native":
        return NativeTransport(
            max_keepalive=_MAX_IDLE, keepalive_expiry=_KEEPALIVE_S, proxies=egress
        )
    via: Callable[[httpx.Proxy | None], httpx.AsyncBaseTransport]
    if config.upstream_transport == "httpx":
        limits = httpx.Limits(
            max_connections=None, max_keepalive_connections=_MAX_IDLE, keepalive_expiry=_KEEPALIVE_S
        )

        def via(proxy: httpx.Proxy | None) -> httpx.AsyncBaseTransport:
            return _HTTPXTransport(limits=limits, proxy=proxy)

    else:
        shared: list[aiohttp.ClientSession] = []

        def session() -> aiohttp.ClientSession:
            # Built on first use, inside the running loop; one for every proxy (aiohttp
            # pools connections per proxy and origin). limit=0: no cap on open upstream
            # connections, as for the other transports; aiohttp's default cap of 100 would
            # queue the 101st concurrent stream until another one ends. The dummy jar: the
            # default one keeps an upstream's cookies (for host names, not IP addresses).
            if not shared:
                connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=_KEEPALIVE_S)
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

    if not egress.active:
        return via(None)
    return _ProxyRouter(egress, via)


class _ProxyRouter(httpx.AsyncBaseTransport):
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
    """Whether a connect error was the TLS handshake failing (somewhere in its causes)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError | aiohttp.ClientSSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


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
