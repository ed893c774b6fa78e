"""The gateway's own HTTP/1.1 client under httpx's types: `upstream_transport: native`.

A relay asks little of its HTTP client: send a POST on a kept-alive connection, hand over
the status and headers, then each read of the body as it arrives. This transport does that
and nothing else, on one `asyncio.Protocol` per connection (`gateway.transports.http11`:
the parser, its bounds and the socket's back-pressure). Each body read is one wakeup of the
reader; the bytes a read carries are whatever arrived since the last one, never re-chunked.

What it keeps from httpx: providers build `httpx.Request`s and get `httpx.Response`s (the
transport API; their streams excepted, below), so headers, decoding of compressed plain
answers (`aiter_bytes`) and the exception classes are httpx's: it raises nothing else
(`MalformedResponse` is an `httpx.RemoteProtocolError`). What it leaves out, on purpose:
HTTP/2, redirects, cookies (a gateway must keep no state between tenants' requests),
`HEAD`, and `Expect: 100-continue` (an informational answer is skipped).

Connections: LIFO per origin, at most `max_keepalive` idle in all, closed after
`keepalive_expiry` seconds idle or when the server closes them. A connection goes back to the
pool only once its response was read to the end; one closed mid-body is discarded. A reused
connection the server closed while it was idle fails its request with RemoteProtocolError,
as httpx's own pool does; the relay's attempts retry that.

The providers' streams skip httpx's objects (`send_raw`), which cost about as much CPU as
the rest of the transport and held ~2 KB per open stream: their bytes come whole from
`gateway.providers.requests` (a head made once per URL, the body's length added), and the
answer is a `NativeResponse`: the status, the head's fields as they came (`FieldHeaders`:
read as `httpx.Headers` reads them, made into anything only if something reads them) and
the body. Such a request goes where its bytes need
no change: straight to the origin, or through a proxy's tunnel (https); an http origin
behind a proxy takes the `httpx.Request` path (`raw_origin`). The same connections, pool,
bounds, timeouts and exceptions serve both.

A body is read either by iterating it (a task wakes for each socket read) or, for the
relay's push mode, by a listener the connection hands each socket read's bytes to, at the
end of the read (`NativeBody.listen`; `read_nowait` for what waited while none was set).
A new connection's host name is looked up once for all the connections a burst opens and
kept 10 s (`gateway.transports.resolve`); the addresses are tried in order.

Egress proxies (`gateway.egress`) are chosen per origin, once; the tunnel and the requests
in absolute form are `gateway.transports.proxy`'s. A connection through a proxy is pooled
under the origin it serves, not the proxy's.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping

import httpx

from gateway.egress import EgressProxies, Proxy
from gateway.transports.errors import MalformedResponse
from gateway.transports.http11 import Connection, Origin, encode, field_pairs
from gateway.transports.proxy import connect_through, proxy_refused
from gateway.transports.resolve import Resolver, connect_first

__all__ = [
    "FieldHeaders",
    "MalformedResponse",
    "NativeBody",
    "NativeRequest",
    "NativeResponse",
    "NativeTransport",
]

_DEFAULT_PORTS = {b"http": 80, b"https": 443}


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
        self._idle: dict[Origin, list[Connection]] = {}
        self._idle_count = 0
        self._open: set[Connection] = set()
        self._proxies = proxies if proxies is not None and proxies.active else None
        self._routes: dict[Origin, Proxy | None] = {}
        """Each origin's proxy, looked up once: origins are the configured providers'."""
        self._resolver = Resolver()
        """Host names of new connections, looked up once for a burst (`transports.resolve`)."""

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
            data = encode(request, body, proxy)
        else:
            data = encode(request, body)
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

    def raw_origin(self, url: httpx.URL) -> Origin | None:
        """The origin `send_raw` sends requests for `url` to; None when they must go as
        `httpx.Request`s (not http or https, or an http origin reached through a proxy,
        whose requests name their target in absolute form)."""
        scheme = url.raw_scheme
        if scheme not in _DEFAULT_PORTS:
            return None
        origin = (scheme, url.host, url.port or _DEFAULT_PORTS[scheme])
        if scheme == b"http" and self._proxies is not None and self._route(origin) is not None:
            return None
        return origin

    async def send_raw(self, request: NativeRequest) -> NativeResponse:
        """Send a request already in bytes to its origin (from `raw_origin`); the answer once
        its head arrived. Fails as `handle_async_request` does."""
        origin = request.origin
        conn = self._take(origin)
        if conn is None:
            proxy = None if self._proxies is None else self._route(origin)
            conn = await self._connect(origin, request.connect_timeout, proxy)
        try:
            # `conn.send`, without its coroutine: the head's future awaited from here.
            await conn.start(request.data, request.read_timeout)
            status, lines = conn.head()
        except BaseException:
            conn.close()
            raise
        return NativeResponse(status, lines, NativeBody(conn, request.read_timeout))

    async def aclose(self) -> None:
        for conn in list(self._open):
            conn.close(httpx.ReadError("the transport was closed"))
        self._idle.clear()
        self._idle_count = 0

    # --- the pool ---------------------------------------------------------------------------

    def _take(self, origin: Origin) -> Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        deadline = time.monotonic() - self._expiry
        while idle and idle[0].idle_since < deadline:
            self._idle_count -= 1
            idle.pop(0).close()
        while idle:
            conn = idle.pop()
            self._idle_count -= 1
            if conn.usable:
                conn.pooled = False
                return conn
            conn.close()
        return None

    def release(self, conn: Connection) -> None:
        if not conn.reusable or self._idle_count >= self._max_keepalive:
            conn.close()
            return
        # The clock is the system's, not the loop's: `get_running_loop()` makes a getpid()
        # system call on Python 3.11, twice per request here (release, then `_take`).
        conn.idle_since = time.monotonic()
        conn.pooled = True
        self._idle.setdefault(conn.origin, []).append(conn)
        self._idle_count += 1

    def lost(self, conn: Connection) -> None:
        self._open.discard(conn)
        # Only a connection that went idle can be in the idle list: the others are not
        # looked for there. After a burst, each connection the full pool could not keep is
        # closed here, and looking for it among ~1,000 idle ones cost ~120k instructions.
        if not conn.pooled:
            return
        conn.pooled = False
        idle = self._idle.get(conn.origin)
        if idle and conn in idle:
            idle.remove(conn)
            self._idle_count -= 1

    def _route(self, origin: Origin) -> Proxy | None:
        try:
            return self._routes[origin]
        except KeyError:
            assert self._proxies is not None
            scheme, host, port = origin
            proxy = self._routes[origin] = self._proxies.route(scheme.decode(), host, port)
            return proxy

    async def _connect(
        self, origin: Origin, seconds: float | None, proxy: Proxy | None = None
    ) -> Connection:
        scheme, host, port = origin
        context = None
        if scheme == b"https":
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context()
            context = self._ssl
        if proxy is not None:
            conn = Connection(self, origin)
            await connect_through(proxy, host, port, conn, context, seconds, self._resolver)
            self._open.add(conn)
            return conn
        loop = asyncio.get_running_loop()
        resolver = self._resolver
        try:
            with _Deadline(loop, seconds):
                # `Resolver.to_try`, without its coroutines when the addresses are at hand (an
                # IP literal, a name looked up in the last seconds: nearly every connection).
                # With `connect_first`'s for one address, ~1.5k instructions less per new
                # connection (callgrind); a burst opens one per stream.
                addresses = resolver.at_hand(host, port)
                if addresses is None:
                    addresses = await resolver.addresses(loop, host, port)
                _, conn = await connect_first(
                    loop,
                    lambda: Connection(self, origin, loop),
                    addresses,
                    ssl=context,
                    server_hostname=host if context is not None else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        self._open.add(conn)
        return conn


class _Deadline:
    """`asyncio.timeout(seconds)` around one await, on a plain timer: the same rules (the
    task cancelled when it expires, that cancellation raised as TimeoutError unless another
    was asked for meanwhile), for a third of the CPU (~2 µs against ~6.5: no coroutines
    for `async with`, and none of its three `get_running_loop()` calls, each a getpid()
    system call on Python 3.11). Every new upstream connection pays it, and a burst of
    streams opens one per stream."""

    __slots__ = ("_cancelling", "_expired", "_task", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, seconds: float | None) -> None:
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("a deadline must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._expired = False
        self._timer = None if seconds is None else loop.call_later(seconds, self._expire)

    def _expire(self) -> None:
        self._expired = True
        self._task.cancel()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _tb: object
    ) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None  # the handle holds this object's method: no cycle left behind
        if self._expired:
            self._expired = False
            if self._task.uncancel() <= self._cancelling and kind is asyncio.CancelledError:
                raise TimeoutError from error


class NativeBody(httpx.AsyncByteStream):
    """A response body, read as it arrives; its connection goes back to the pool at the
    end, or is closed if the body is closed before it ended."""

    def __init__(self, conn: Connection, read_timeout: float | None) -> None:
        self._conn: Connection | None = conn
        self._read_timeout = read_timeout
        self.took_last = False
        """Whether the bytes `read_nowait` returned last ended the body (nothing left,
        nothing to come: the next `read_nowait` says None). An attribute rather than a
        method: a push reader asks it after every read."""

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

    def listen(self, listener: Callable[[bytes, bool], None] | None) -> None:
        """Push mode: `listener(data, last)` is called from the connection's own callbacks,
        with no task in between, at the end of each socket read that brought body bytes,
        the body's end or the connection's failure. `data` is all the read's body bytes,
        taken as `read_nowait` would have returned them (b"" if it brought none); `last`:
        the body ended with them (as `took_last` says after a `read_nowait`). When `data`
        is b"" and the body ended or failed, `read_nowait()` says which (None, or raises),
        as it does while no listener is set. It must not raise.

        Set it only when nothing waits unread (`read_nowait()` said b""): from then on no
        byte does, so the high-water mark never pauses the socket. None returns to pulling
        (`read_nowait`, `__anext__`): a listener that cannot take more sets it (in its call,
        or before), and the bytes that arrive then wait, pausing the socket past the mark."""
        conn = self._conn
        if conn is None:
            return
        if listener is not None and conn.chunks:
            raise RuntimeError("a listener is set only once the unread bytes were read")
        conn.listener = listener

    def read_nowait(self) -> bytes | None:
        """What arrived since the last read (b"" if nothing did), None once the body ended;
        raises the connection's error. Unread bytes past the high-water mark pause the
        socket, so a listener that stops reading holds the upstream back."""
        conn = self._conn
        if conn is None:
            return None
        if conn.chunks:
            self.took_last = conn.complete
            return conn.take()
        if conn.complete:
            self._conn = None
            conn.listener = None
            conn.pool.release(conn)
            return None
        if conn.error is not None:
            raise conn.error
        return b""

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        """`aclose` without a coroutine (it never waits): the connection back to the pool
        if the body was read to its end, else closed."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        conn.listener = None
        if conn.complete and not conn.chunks:
            conn.pool.release(conn)
        else:
            conn.close()


class NativeRequest:
    """A request in bytes for `NativeTransport.send_raw`: its origin, its whole bytes (head
    and body, written in one call) and its timeouts (as the `timeout` extension's)."""

    __slots__ = ("connect_timeout", "data", "origin", "read_timeout")

    def __init__(
        self,
        origin: Origin,
        data: bytes,
        connect_timeout: float | None,
        read_timeout: float | None = None,
    ) -> None:
        self.origin = origin
        self.data = data
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout


class NativeResponse:
    """What `send_raw` answers: the status, the head's fields and the body. Read like an
    `httpx.Response` by a stream (`status_code`, `headers`, `stream`, `aclose`); anything
    more (an error body to decode) takes `as_httpx()`."""

    __slots__ = ("headers", "status_code", "stream")

    def __init__(self, status: int, lines: list[bytes], body: NativeBody) -> None:
        self.status_code = status
        self.headers = FieldHeaders(lines)
        self.stream = body

    def as_httpx(self) -> httpx.Response:
        """The same answer as an `httpx.Response`, for what reads more than a stream does
        (a compressed error body, every header); the body is not read yet."""
        return httpx.Response(
            self.status_code,
            headers=self.headers.fields,
            stream=self.stream,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        await self.stream.aclose()


class FieldHeaders(Mapping[str, str]):
    """A response head's fields as they came (`Connection.head`'s lines), read as
    `httpx.Headers` reads them: names case-insensitive, several values joined with ", ", text
    in ASCII, else UTF-8, else Latin-1. Nothing is made until something reads them (most
    streams read one field, by `raw`). A read by name makes one dict of them all, in bytes
    (a value is decoded when asked for): the upstream limiter's ~18 lookups cost a pass
    over the fields, not an `httpx.Headers`, which makes three objects a field, decodes them
    all, and scans them all for each lookup (a miss raising a KeyError inside)."""

    __slots__ = ("_by_name", "_encoding", "_pairs", "lines")

    def __init__(self, lines: list[bytes]) -> None:
        self.lines = lines
        self._pairs: list[tuple[bytes, bytes]] | None = None
        self._by_name: dict[bytes, bytes] | None = None
        self._encoding = ""

    @property
    def fields(self) -> list[tuple[bytes, bytes]]:
        """The (name, value) pairs, in order, as they came."""
        pairs = self._pairs
        if pairs is None:
            pairs = self._pairs = field_pairs(self.lines)
        return pairs

    def raw(self, name: bytes) -> bytes | None:
        """A field's value by its lower-case name, as it came (several joined with ", ",
        as httpx joins them); None if absent."""
        found = None
        size = len(name)
        for line in self.lines:
            # The colon first: most lines are not the field asked for, and need no
            # lower-cased copy (OpenAI's streams come with about 24 fields).
            if len(line) > size and line[size] == 58 and line[:size].lower() == name:
                value = line[size + 1 :].lstrip(b" \t")
                found = value if found is None else found + b", " + value
        return found

    def _find(self, name: str) -> bytes | None:
        """`name`'s value, still in bytes, looked up as `httpx.Headers` looks it up (which
        raises UnicodeEncodeError for a name its encoding cannot write, as this does)."""
        by_name = self._by_name
        if by_name is None:
            # In bytes, decoded only when asked for: the upstream limiter asks for ~18
            # names, of which a real answer has ~6, among ~24 fields.
            by_name = self._by_name = {}
            for line in self.lines:
                key, _, value = line.partition(b":")
                key = key.lower()
                if key in by_name:  # several fields of a name: joined, as httpx does
                    by_name[key] = by_name[key].lstrip(b" \t") + b", " + value.lstrip(b" \t")
                else:
                    by_name[key] = value
            self._encoding = _encoding(self.lines)
        return by_name.get(name.lower().encode(self._encoding))

    def starting_with(self, prefixes: tuple[bytes, ...]) -> dict[str, str]:
        """The fields whose lower-cased names begin with one of `prefixes` (lower-case),
        by lower-cased name, read as `get` reads them: what the upstream limiter looks up
        (`gateway.limits.upstream.PrefixedFields`), without a dict of all the fields."""
        firsts = _first_bytes(prefixes)
        found: dict[bytes, bytes] = {}
        for line in self.lines:
            # By the first byte first: most fields begin with none of the prefixes'.
            if line[0] in firsts:
                key, _, value = line.partition(b":")
                key = key.lower()
                if key.startswith(prefixes):
                    if key in found:  # several fields of a name: joined, as httpx does
                        found[key] += b", " + value.lstrip(b" \t")
                    else:
                        found[key] = value.lstrip(b" \t")
        if not found:
            return {}
        encoding = self._encoding or _encoding(self.lines)
        self._encoding = encoding
        return {key.decode(encoding): value.decode(encoding) for key, value in found.items()}

    def __getitem__(self, name: str) -> str:
        value = self._find(name)
        if value is None:
            raise KeyError(name)
        return value.lstrip(b" \t").decode(self._encoding)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._find(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(httpx.Headers(self.fields))

    def __len__(self) -> int:
        return len(self.fields)  # as httpx.Headers counts: each field, repeated names too

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        value = self._find(name)
        if value is None:
            return default
        return value.lstrip(b" \t").decode(self._encoding)

    def __repr__(self) -> str:
        return repr(httpx.Headers(self.fields))


@functools.cache
def _first_bytes(prefixes: tuple[bytes, ...]) -> frozenset[int]:
    """The bytes a name beginning with one of `prefixes` (lower-case) can begin with."""
    firsts = {prefix[0] for prefix in prefixes}
    return frozenset(firsts | {byte - 32 for byte in firsts if 97 <= byte <= 122})


def _encoding(lines: list[bytes]) -> str:
    """The text encoding `httpx.Headers` reads these fields in: the first of ASCII and UTF-8
    every name and value decode in, else Latin-1. A whole line decodes exactly when its name
    and value do: what joins them (the colon, spaces, tabs) is ASCII, which in UTF-8 is never
    part of another character."""
    # One join and one `isascii` (5.3k instructions on a 24-field head) rather than an
    # `isascii` call per line (8.8k).
    if b"".join(lines).isascii():
        return "ascii"
    try:
        for line in lines:
            line.decode("utf-8")
    except UnicodeDecodeError:
        return "iso-8859-1"
    return "utf-8"
