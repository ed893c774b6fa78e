"""The gateway's own HTTP/1.1 client under httpx's types: `upstream_transport: native`.

A relay asks little of its HTTP client: send a POST on a kept-alive connection, hand over
the status and headers, then each read of the body as it arrives. This transport does that
and nothing else, on one `asyncio.Protocol` per connection with httptools (llhttp, the
parser uvicorn uses) reading the responses. Each body read is one wakeup of the reader; the
bytes a read carries are whatever arrived since the last one, never re-chunked.

What it keeps from httpx: providers build `httpx.Request`s and get `httpx.Response`s (the
transport API), so headers, decoding of compressed plain answers (`aiter_bytes`) and the
exception classes are httpx's, and `upstream_errors` maps them as it maps the other
transports'. What it leaves out, on purpose: HTTP/2, redirects, cookies (a gateway
must keep no state between tenants' requests), `HEAD` (a response to it has no body, which
the parser cannot be told), and `Expect: 100-continue` (an informational answer is skipped).

Connections: LIFO per origin, at most `max_keepalive` idle in all, closed after
`keepalive_expiry` seconds idle or when the server closes them. A connection goes back to the
pool only once its response was read to the end; one closed mid-body is discarded. A reused
connection the server closed while it was idle fails its request with RemoteProtocolError,
as httpx's own pool does; the relay's attempts retry that.

Reads pause the socket (`pause_reading`) when more than `_HIGH_WATER` bytes wait unread, so
a slow reader holds at most that much per connection. A response's head is bounded:
`_MAX_HEAD` bytes, httpx's bound (status line and header fields, informational answers'
heads included), and `_MAX_FIELDS` fields of at most `_MAX_FIELD` bytes each; so are the
bytes between two body parts (chunk framing, extensions, trailers). Past a bound the
response fails with `MalformedResponse` and the connection closes; llhttp bounds none of
these itself.

A body is read either by iterating it (a task wakes for each socket read) or, for the
relay's push mode, by a listener the connection calls at the end of each socket read
(`NativeBody.listen`, `read_nowait`). Host names are resolved by the event loop for each
new connection (no cache of its own; kept-alive connections make that rare).

Egress proxies (`gateway.egress`, from HTTPS_PROXY / HTTP_PROXY / NO_PROXY): an https
origin is reached through a `CONNECT host:port` tunnel, TLS then spoken through it to the
origin; an http origin gets its requests in absolute form (`POST http://host:port/path`)
sent to the proxy, as curl, httpx and aiohttp send them. Either way a connection is pooled
under the origin it serves, not the proxy's. A proxy that cannot be reached or refuses the
tunnel fails the request with `httpx.ProxyError`, its message naming the proxy without its
credentials.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncIterator, Callable
from typing import cast

import httptools
import httpx

from gateway.egress import EgressProxies, Proxy

_HIGH_WATER = 256 * 1024
_MAX_HEAD = 100 * 1024
"""httpcore's bound (its h11 `max_incomplete_event_size`), so an answer httpx takes, this
transport takes. aiohttp allows 8190 bytes a field and h11 16 KiB a head by default."""
_MAX_FIELD = 16 * 1024
_MAX_FIELDS = 256
_Origin = tuple[bytes, str, int]
_DEFAULT_PORTS = {b"http": 80, b"https": 443}
_MAX_PROXY_HEAD = 16 * 1024
"""The most a proxy's answer to CONNECT may take, status line and headers."""
_PROXY_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})[ \r]")


class MalformedResponse(httpx.RemoteProtocolError):
    """The server's bytes are not a valid HTTP/1.1 response (bad status line, headers or
    chunk framing), as opposed to a connection that ended early."""


class _OverBound(Exception):
    """Raised in a parser callback to stop llhttp where a bound was passed."""


class NativeTransport(httpx.AsyncBaseTransport):
    """A pooled HTTP/1.1 transport. Timeouts come from each request's `timeout` extension
    (`connect`, and `read`: the longest wait for any read, headers included; None waits
    for ever). `pool` and `write` do not apply: connections are not capped, and a request
    is written in one call."""

    def __init__(
        self,
        *,
        max_keepalive: int = 256,
        keepalive_expiry: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        proxies: EgressProxies | None = None,
    ) -> None:
        self._max_keepalive = max_keepalive
        self._expiry = keepalive_expiry
        self._ssl = ssl_context
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._idle_count = 0
        self._open: set[_Connection] = set()
        self._proxies = proxies if proxies is not None and proxies.active else None
        self._routes: dict[_Origin, Proxy | None] = {}
        """Each origin's proxy, looked up once: origins are the configured providers'."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.raw_scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol("the native transport speaks http and https only")
        if request.method == "HEAD":
            raise httpx.UnsupportedProtocol("the native transport does not send HEAD requests")
        origin = (scheme, url.host, url.port or _DEFAULT_PORTS[scheme])
        timeouts = request.extensions.get("timeout") or {}
        read_timeout = timeouts.get("read")
        # A body given whole (httpx.ByteStream, what the providers build) is joined as it
        # is; aread() would run an async generator for the same bytes.
        stream = request.stream
        if isinstance(stream, httpx.SyncByteStream):
            body = b"".join(stream)
        else:
            body = await request.aread()
        proxy = None if self._proxies is None else self._route(origin)
        if proxy is not None and scheme == b"http":
            data = _encode(request, body, proxy)
        else:
            data = _encode(request, body)
        conn = self._take(origin)
        if conn is None:
            conn = await self._connect(origin, timeouts.get("connect"), proxy)
        try:
            status, headers = await conn.send(data, read_timeout)
        except BaseException:
            conn.close()
            raise
        if status == 407 and proxy is not None and scheme == b"http":
            conn.close()
            raise proxy_refused(proxy, url.host, 407)
        return httpx.Response(
            status,
            headers=headers,
            stream=NativeBody(conn, read_timeout),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        for conn in list(self._open):
            conn.close(httpx.ReadError("the transport was closed"))
        self._idle.clear()
        self._idle_count = 0

    # --- the pool ---------------------------------------------------------------------------

    def _take(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        deadline = asyncio.get_running_loop().time() - self._expiry
        while idle and idle[0].idle_since < deadline:
            self._idle_count -= 1
            idle.pop(0).close()
        while idle:
            conn = idle.pop()
            self._idle_count -= 1
            if conn.usable:
                return conn
            conn.close()
        return None

    def _release(self, conn: _Connection) -> None:
        if not conn.reusable or self._idle_count >= self._max_keepalive:
            conn.close()
            return
        conn.idle_since = asyncio.get_running_loop().time()
        self._idle.setdefault(conn.origin, []).append(conn)
        self._idle_count += 1

    def _lost(self, conn: _Connection) -> None:
        self._open.discard(conn)
        idle = self._idle.get(conn.origin)
        if idle and conn in idle:
            idle.remove(conn)
            self._idle_count -= 1

    def _route(self, origin: _Origin) -> Proxy | None:
        try:
            return self._routes[origin]
        except KeyError:
            assert self._proxies is not None
            scheme, host, port = origin
            proxy = self._routes[origin] = self._proxies.route(scheme.decode(), host, port)
            return proxy

    async def _connect(
        self, origin: _Origin, seconds: float | None, proxy: Proxy | None = None
    ) -> _Connection:
        scheme, host, port = origin
        context = None
        if scheme == b"https":
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context()
            context = self._ssl
        if proxy is not None:
            return await self._connect_via(proxy, origin, context, seconds)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(seconds):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self, origin),
                    host,
                    port,
                    ssl=context,
                    server_hostname=host if context is not None else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        self._open.add(conn)
        return conn

    async def _connect_via(
        self,
        proxy: Proxy,
        origin: _Origin,
        context: ssl.SSLContext | None,
        seconds: float | None,
    ) -> _Connection:
        """A connection to `origin` through `proxy`: to the proxy itself for an http origin
        (its requests are sent in absolute form), a CONNECT tunnel with TLS inside for an
        https one. The timeout covers the whole setup."""
        _, host, port = origin
        loop = asyncio.get_running_loop()
        conn = _Connection(self, origin)
        try:
            async with asyncio.timeout(seconds):
                if context is None:
                    await loop.create_connection(lambda: conn, proxy.host, proxy.port)
                else:
                    tunnel = _TunnelOpener()
                    raw, _ = await loop.create_connection(lambda: tunnel, proxy.host, proxy.port)
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
        self._open.add(conn)
        return conn


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


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: one request at a time, the response parsed as it arrives."""

    def __init__(self, pool: NativeTransport, origin: _Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.idle_since = 0.0
        self.reusable = False
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._closed = False
        self._head: asyncio.Future[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        """The fields being read: the head's, then the trailers' (which are dropped)."""
        self._fields: list[tuple[bytes, bytes]] = []
        """The head's fields, once the head ended."""
        self._status = 0
        self._informational = False
        self._started = False
        self._has_length = False
        self.chunks: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self.complete = False
        self.error: httpx.TransportError | None = None
        self.listener: Callable[[], None] | None = None
        """Push mode (`NativeBody.listen`): called instead of waking a reader."""
        self._feeding = False
        self._heard = False
        self._head_left = _MAX_HEAD
        """Bytes the parser may still take before a body part or the head's end; see
        `data_received`."""
        self._over: str | None = None
        """Which bound a parser callback found passed."""

    @property
    def usable(self) -> bool:
        return not self._closed and self._transport is not None and not self._transport.is_closing()

    # --- used by the transport and the body --------------------------------------------------

    async def send(
        self, data: bytes, read_timeout: float | None
    ) -> tuple[int, list[tuple[bytes, bytes]]]:
        """Write one request; the response's status and headers once they arrived."""
        assert self._transport is not None
        self._headers = []
        self._head_left = _MAX_HEAD
        self._started = self.complete = self.reusable = self._has_length = False
        self.error = None
        self._head = head = self._loop.create_future()
        self._transport.write(data)
        await self._wait(head, read_timeout)
        return self._status, self._fields

    async def wait_body(self, read_timeout: float | None) -> None:
        """Until more of the body arrived, it ended, or the connection failed."""
        self._waiter = waiter = self._loop.create_future()
        try:
            await self._wait(waiter, read_timeout)
        finally:
            self._waiter = None

    def take(self) -> bytes:
        """Every unread body byte. Reading resumes if they had paused the socket: it pauses
        only while bytes wait unread, so a connection is never left paused once read, in the
        pool or out of it (its next answer, and the server closing it, need the socket read)."""
        chunks = self.chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return data

    def close(self, error: httpx.TransportError | None = None) -> None:
        """Close the connection; a read in progress fails with `error` if one is given."""
        if error is not None:
            self._fail(error)
        self.reusable = False
        if self._transport is not None:
            self._transport.close()

    async def _wait(self, future: asyncio.Future[None], seconds: float | None) -> None:
        if self.error is None and self._closed:
            self._fail(httpx.RemoteProtocolError("the server closed the connection"))
        if self.error is not None:
            raise self.error  # it failed before this wait began: nothing would wake the future
        if seconds is None:
            await future
        else:
            try:
                async with asyncio.timeout(seconds):
                    await future
            except TimeoutError:
                raise httpx.ReadTimeout(f"nothing arrived within {seconds:g} s") from None
        if self.error is not None:
            raise self.error

    def _wake(self, future: asyncio.Future[None] | None) -> None:
        if future is not None and not future.done():
            future.set_result(None)

    def _notify(self) -> None:
        """Body bytes arrived, the body ended or the connection failed: tell the reader. A
        listener hears once per socket read, after the parser is done with it, so it gets
        all the read's body bytes at once, as a pulling reader does."""
        if self.listener is None:
            self._wake(self._waiter)
        elif self._feeding:
            self._heard = True
        else:
            self.listener()

    def _fail(self, error: httpx.TransportError) -> None:
        if self.error is None and not self.complete:
            self.error = error
        self.reusable = False
        self._wake(self._head)
        self._notify()

    # --- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport: no isinstance here.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        # httptools joins a header field's pieces until it ends: an answer whose head never
        # ends would hold all of it. `_head_left` counts the bytes fed since the last body
        # part or the end of the head, a read at a time, and the parser is never fed past
        # it. (A body part or a head's end restarts the count mid-read: the rest of that read
        # is not counted, so the bound holds to within one read.)
        error: MalformedResponse | None = None
        left = self._head_left
        self._feeding = True
        try:
            if len(data) <= left:
                self._head_left = left - len(data)
                self._parser.feed_data(data)
            else:
                self._feed_bounded(memoryview(data))
        except httptools.HttpParserError as exc:
            error = MalformedResponse(f"malformed HTTP response: {self._over or exc}")
            self._over = None
        except httptools.HttpParserUpgrade:
            error = MalformedResponse("the server switched protocols")
        finally:
            self._feeding = False
        heard, self._heard = self._heard, False
        if error is not None:
            self.close(error)  # tells the reader, listener or not
        elif heard and self.listener is not None:
            self.listener()

    def _feed_bounded(self, view: memoryview) -> None:
        """A read longer than the count allows: fed up to the bound, then on while a body part
        or the head's end restarted the count. Raises as `feed_data` does."""
        while len(view) > self._head_left:
            left = self._head_left
            self._head_left = 0
            self._parser.feed_data(view[:left])
            if self._head_left == 0:
                if self._head is not None and self._head.done():
                    self._over = f"more than {_MAX_HEAD} bytes between two body parts"
                else:
                    self._over = f"a response head over {_MAX_HEAD} bytes"
                raise httptools.HttpParserError(self._over)
            view = view[left:]
        self._head_left -= len(view)
        self._parser.feed_data(view)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.reusable = False
        self.pool._lost(self)
        if self.complete:
            return
        if self._head is not None and self._head.done() and not self._has_length:
            # A body without a length or chunked encoding ends where the connection does.
            self.complete = True
            self._notify()
            return
        if not self._started:
            message = "the server closed the connection without sending a response"
        elif self._head is not None and not self._head.done():
            message = "the server closed the connection in the middle of the response headers"
        else:
            message = "the server closed the connection in the middle of the response body"
        self._fail(
            httpx.ReadError(message) if exc is not None else httpx.RemoteProtocolError(message)
        )

    def pause_writing(self) -> None:
        pass  # requests are written in one call and are small; nothing to hold back

    def resume_writing(self) -> None:
        pass

    # --- httptools callbacks (they must not raise: the parser would wrap the error) ----------

    def on_message_begin(self) -> None:
        self._started = True

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        if len(headers) >= _MAX_FIELDS or len(name) + len(value) > _MAX_FIELD:
            many = len(headers) >= _MAX_FIELDS
            self._over = (
                f"more than {_MAX_FIELDS} header fields"
                if many
                else f"a header field over {_MAX_FIELD} bytes"
            )
            raise _OverBound  # stops the parser; data_received fails the response
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            self._informational = True  # its end is skipped; the real answer follows
            self._headers = []
            return  # its head counts towards the real answer's
        self._head_left = _MAX_HEAD
        self._status = status
        # Trailers that come in the same read as the head must not join its fields.
        self._fields, self._headers = self._headers, []
        for name, value in self._fields:
            lowered = name.lower()
            if lowered == b"content-length" or (
                lowered == b"transfer-encoding" and b"chunked" in value.lower()
            ):
                self._has_length = True
        if status in (204, 304):
            self._has_length = True
        self._wake(self._head)

    def on_body(self, body: bytes) -> None:
        self._head_left = _MAX_HEAD
        self.chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._notify()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        self.complete = True
        self.reusable = self._parser.should_keep_alive()
        self._wake(self._head)
        self._notify()


class NativeBody(httpx.AsyncByteStream):
    """A response body, read as it arrives; its connection goes back to the pool at the
    end, or is closed if the body is closed before it ended."""

    def __init__(self, conn: _Connection, read_timeout: float | None) -> None:
        self._conn: _Connection | None = conn
        self._read_timeout = read_timeout

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        while True:
            data = self.read_nowait()
            if data is None:
                raise StopAsyncIteration
            if data:
                return data
            assert self._conn is not None  # read_nowait keeps it until the body ended
            await self._conn.wait_body(self._read_timeout)

    def listen(self, listener: Callable[[], None] | None) -> None:
        """Push mode: `listener()` is called from the connection's own callbacks, with no
        task in between, whenever body bytes arrive, the body ends or the connection fails;
        it reads with `read_nowait()`. It must not raise. None returns to `__anext__`."""
        if self._conn is not None:
            self._conn.listener = listener

    def read_nowait(self) -> bytes | None:
        """What arrived since the last read (b"" if nothing did), None once the body ended;
        raises the connection's error. Unread bytes past the high-water mark pause the
        socket, so a listener that stops reading holds the upstream back."""
        conn = self._conn
        if conn is None:
            return None
        if conn.chunks:
            return conn.take()
        if conn.complete:
            self._conn = None
            conn.listener = None
            conn.pool._release(conn)
            return None
        if conn.error is not None:
            raise conn.error
        return b""

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        conn.listener = None
        if conn.complete and not conn.chunks:
            conn.pool._release(conn)
        else:
            conn.close()


def _encode(request: httpx.Request, body: bytes, proxy: Proxy | None = None) -> bytes:
    """The request's bytes; to an http `proxy`, its target in absolute form."""
    url = request.url
    target = url.raw_path
    pairs = request.headers.raw
    if proxy is not None:
        target = b"http://%s%s" % (url.netloc, target)
        if (authorization := proxy.authorization) is not None:
            pairs = [*pairs, (b"proxy-authorization", authorization.encode("ascii"))]
    lines = [b"%s %s HTTP/1.1\r\n" % (request.method.encode("ascii"), target)]
    if "transfer-encoding" in request.headers:
        # A streamed body was read whole above: it goes out with its length instead.
        pairs = [p for p in pairs if p[0].lower() != b"transfer-encoding"]
        pairs.append((b"content-length", b"%d" % len(body)))
    lines.extend(b"%s: %s\r\n" % pair for pair in pairs)
    lines.append(b"\r\n")
    lines.append(body)
    return b"".join(lines)
