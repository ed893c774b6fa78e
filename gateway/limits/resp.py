"""A lean Redis client for the limiter: one connection, auto-pipelined, RESP2.

Every request is admitted and settled in Redis, so the client's own cost is on every
request's path. redis-py spends about 250 µs of CPU per script call (pool checkout, retry
wrapper, per-command timeout, encoder) where the Lua script itself runs in under 100 µs,
and under a burst of 500 new requests its pool opens dozens of connections. The limiter
needs only a few commands, so it speaks RESP itself:

- One connection, opened on first use (and again after it is lost). A call on an idle
  connection is written at once; calls made while others are in flight leave together at
  the end of the event-loop turn, in one write, and Redis answers them in order: a burst
  of admissions is one pipeline, without any caller waiting for a batch to fill. A call
  nobody waits for (a settle) may be given a `delay`: made while others are in flight, it
  waits up to that long for company, and the next call without one takes it along.
- Commands can be packed once and sent many times (`Script.head` + `pack_items`): the
  limiter's calls differ per request only in their last few arguments.
- A call unanswered after `timeout` seconds fails its connection, and with it every call
  in flight on it (their replies could no longer be matched); one timer per connection,
  not one per call. A lost connection fails the calls in flight at once.
- `Script` runs EVALSHA; when Redis answers NOSCRIPT (after a restart) it loads the
  script and sends the call again.
- URLs (read by `gateway.redis_url`): `redis://[[user]:password@]host[:port][/db]`,
  `rediss://` (TLS, verified against the system's CAs, or the file named by
  `?ssl_ca_certs=/path/ca.pem`) and `unix:///path/to/socket?db=N`.

  Any other URL option is refused (not silently ignored), and so is Sentinel.

Failures raise redis-py's exceptions (`ConnectionError`, `TimeoutError`, `ResponseError`),
so callers treat them like any other Redis error. Deliberately not here: RESP3, pub/sub,
Cluster redirections (`gateway.limits.cluster` serves `redis+cluster://` URLs with
redis-py's Cluster client; a MOVED or ASK reaching this client is an error) and Sentinel.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol, cast

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.redis_url import Address

Arg = bytes | str | int | float

_GRACE_S = 0.001
"""How long after its deadline an unanswered call is judged again (past one I/O poll)."""


def pack(args: Sequence[Arg]) -> bytes:
    """One command as a RESP array of bulk strings."""
    return b"*%d\r\n" % len(args) + pack_items(args)


def pack_items(args: Sequence[Arg]) -> bytes:
    """The bulk strings of `args` without the array's header: the tail of a command whose
    head was packed once (`Script.head`)."""
    out = []
    for arg in args:
        if isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int):
            data = b"%d" % arg
        elif isinstance(arg, bytes):
            data = arg
        else:
            data = repr(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Incomplete(Exception):
    pass


def parse(buf: bytes | bytearray, pos: int) -> tuple[Any, int]:
    """One RESP2 reply starting at `pos`: (value, position after it). Raises _Incomplete
    when `buf` holds only part of it. Bulk strings are bytes, simple strings str, errors
    ResponseError instances (returned, not raised)."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind = buf[pos]
    line = buf[pos + 1 : end]
    if kind == 0x3A:  # ':' integer
        return int(line), end + 2
    if kind == 0x24:  # '$' bulk string
        size = int(line)
        if size < 0:
            return None, end + 2
        stop = end + 2 + size
        if len(buf) < stop + 2:
            raise _Incomplete
        return bytes(buf[end + 2 : stop]), stop + 2
    if kind == 0x2A:  # '*' array
        count = int(line)
        if count < 0:
            return None, end + 2
        items = []
        pos = end + 2
        for _ in range(count):
            item, pos = parse(buf, pos)
            items.append(item)
        return items, pos
    if kind == 0x2B:  # '+' simple string
        return line.decode(), end + 2
    if kind == 0x2D:  # '-' error
        return ResponseError(line.decode(errors="replace")), end + 2
    raise RedisConnectionError(f"unexpected RESP reply type {chr(kind)!r}")


class _Connection(asyncio.Protocol):
    """One Redis connection: commands out in order, replies matched to calls in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self.timeout = timeout
        self._transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        """Commands to write at the end of this loop turn (`_soon`) or a little later."""
        self._soon: asyncio.Handle | None = None
        self._later: asyncio.TimerHandle | None = None
        self._waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        """Calls sent or about to be, oldest first, each with its deadline."""
        self._buf = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False
        self._why: Exception | None = None

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio's; they have the same API.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        # Usually a read holds whole replies: they are parsed from `data` itself, and only
        # the start of a reply cut off at the end is copied (to `_buf`, for the next read).
        buf = self._buf
        replies: bytes | bytearray = data
        if buf:
            buf += data
            replies = buf
        pos = 0
        size = len(replies)
        waiting = self._waiting
        try:
            while pos < size:
                reply, pos = parse(replies, pos)
                if not waiting:
                    raise RedisConnectionError("Redis sent a reply nobody asked for")
                future, _ = waiting.popleft()
                if future.done():
                    continue  # its caller was cancelled; the reply is dropped in turn
                if isinstance(reply, ResponseError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except _Incomplete:
            pass
        except (RedisConnectionError, ValueError) as exc:
            self.fail(RedisConnectionError(f"unreadable reply from Redis: {exc}"))
            return
        if buf:
            del buf[:pos]
        elif pos < size:
            buf += data[pos:]

    def connection_lost(self, exc: Exception | None) -> None:
        why = self._why or RedisConnectionError(
            "connection to Redis lost" + (f": {exc}" if exc else "")
        )
        self._close(why)

    # --- calls -----------------------------------------------------------------------------

    def call(self, command: bytes, delay: float = 0.0) -> asyncio.Future[Any]:
        """Queue one command; its reply's future. With a `delay`, a command made while
        others are in flight may wait up to that many seconds to leave together with later
        ones (for calls nobody waits on, such as settles); a call without one takes
        everything queued along, in order. On a connection with nothing in flight every call
        is written at once, with whatever waits."""
        if self.closed:
            raise self._failure()
        loop = self._loop
        future = loop.create_future()
        now = loop.time()
        out = self._out
        in_flight = len(self._waiting) > len(out)
        out.append(command)
        if not in_flight and self._transport is not None:
            # Nothing to batch with, so no reason to wait. A settle leaves at once too: the
            # slot it frees is then free for another replica's next admission as well (a
            # client sending one request after another through two replicas of a
            # max_concurrent 1 key would otherwise meet its own finished request).
            self.flush()
            delay = 0.0
        elif delay:
            if self._soon is None and self._later is None:
                self._later = self._loop.call_at(now + delay, self.flush)
        elif self._soon is None:
            self._soon = self._loop.call_soon(self.flush)
        self._waiting.append((future, now + delay + self.timeout))
        if self._timer is None:
            self._timer = self._loop.call_at(now + delay + self.timeout, self._check)
        return future

    @property
    def idle(self) -> bool:
        """Open, with no call in flight or queued: a call made now is written at once."""
        return not self._waiting and self._transport is not None and not self.closed

    def _cancel_flush(self) -> None:
        for handle in (self._soon, self._later):
            if handle is not None:
                handle.cancel()
        self._soon = self._later = None

    def flush(self) -> None:
        """Write what is queued now."""
        if self._soon is not None or self._later is not None:
            self._cancel_flush()
        out, self._out = self._out, []
        if out and self._transport is not None and not self.closed:
            self._transport.write(b"".join(out) if len(out) > 1 else out[0])

    def _check(self, suspect: asyncio.Future[Any] | None = None) -> None:
        self._timer = None
        # The oldest call decides, answered-but-cancelled callers included: their replies
        # are still due before the others'.
        if not self._waiting or self.closed:
            return
        oldest, deadline = self._waiting[0]
        if self._loop.time() < deadline:
            self._timer = self._loop.call_at(deadline, self._check)
        elif oldest is suspect:
            self.fail(RedisTimeoutError(f"Redis did not answer within {self.timeout:g} s"))
        else:
            # Overdue, but an event loop too busy to read its sockets may have the reply
            # waiting unread: judge again after one more round of I/O.
            self._timer = self._loop.call_later(_GRACE_S, self._check, oldest)

    def fail(self, why: Exception) -> None:
        """Close the connection; every call in flight fails with `why`."""
        self._why = self._why or why
        if self._transport is not None:
            self._transport.abort()  # connection_lost follows and fails the calls
        self._close(why)

    def _close(self, why: Exception) -> None:
        self.closed = True
        self._why = self._why or why
        self._cancel_flush()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self._waiting = self._waiting, deque()
        for future, _ in waiting:
            if not future.done():
                future.set_exception(self._failure())

    def _failure(self) -> Exception:
        """A fresh exception saying why the connection ended: one instance per caller, so
        no two tasks share (and rewrite) one traceback."""
        why = self._why or RedisConnectionError("connection to Redis closed")
        return type(why)(*why.args)


class RespClient:
    """Calls to one Redis server over one pipelined connection (see the module docstring).

    `timeout` bounds connecting and each call. Safe to share between any number of tasks
    of one event loop.
    """

    def __init__(self, url: str, *, timeout: float = 0.5) -> None:
        self.address = Address.from_url(url)
        self.timeout = timeout
        self._conn: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None

    async def call(self, *args: Arg, delay: float = 0.0) -> Any:
        """Send one command; its reply (bytes, int, str, list or None). `delay`: how long
        the command may wait to share a write with later ones (see `_Connection.call`)."""
        return await self.send(pack(args), delay)

    async def send(self, command: bytes, delay: float = 0.0) -> Any:
        """`call` for a command packed already."""
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._connection()
        return await conn.call(command, delay)

    def send_nowait(self, command: bytes, delay: float = 0.0) -> asyncio.Future[Any] | None:
        """`send` without a task: the reply's future, or None when no connection is open
        (use `send` then: it opens one)."""
        conn = self._conn
        if conn is None or conn.closed:
            return None
        return conn.call(command, delay)

    def connected(self) -> bool:
        """A connection is open: a call made now is queued before the caller awaits."""
        conn = self._conn
        return conn is not None and not conn.closed

    def idle(self) -> bool:
        """True when a call made now would be written at once, alone (a connection open with
        nothing in flight); False when it would share a write, or needs a connection opened."""
        conn = self._conn
        return conn is not None and conn.idle

    def flush(self) -> None:
        """Write the calls waiting to share a write (delayed ones) now."""
        if self._conn is not None and not self._conn.closed:
            self._conn.flush()

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            conn.fail(RedisConnectionError("client closed"))

    async def _connection(self) -> _Connection:
        # Callers arriving while a connection is being opened wait for that one.
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
            # Retrieved here too, in case every caller waiting for it was cancelled.
            self._connecting.add_done_callback(_retrieve)
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if self._connecting is connecting and connecting.done():
                self._connecting = None

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        address = self.address
        conn = _Connection(loop, self.timeout)
        try:
            async with asyncio.timeout(self.timeout):
                if address.path is not None:
                    await loop.create_unix_connection(lambda: conn, address.path)
                else:
                    context = (
                        ssl.create_default_context(cafile=address.ca_certs) if address.tls else None
                    )
                    await loop.create_connection(
                        lambda: conn, address.host, address.port, ssl=context
                    )
                handshake = []
                if address.password is not None:
                    auth = [address.username, address.password] if address.username else []
                    handshake.append(conn.call(pack(["AUTH", *(auth or [address.password])])))
                if address.db:
                    handshake.append(conn.call(pack(["SELECT", address.db])))
                if handshake:
                    await asyncio.gather(*handshake)
        except TimeoutError:
            conn.fail(RedisConnectionError("timed out connecting to Redis"))
            raise RedisTimeoutError(
                f"Redis at {self._where()} did not answer within {self.timeout:g} s"
            ) from None
        except BaseException:
            conn.fail(RedisConnectionError("connection setup failed"))
            raise
        self._conn = conn
        return conn

    def _where(self) -> str:
        a = self.address
        return a.path if a.path is not None else f"{a.host}:{a.port}"


def is_noscript(exc: BaseException) -> bool:
    """NOSCRIPT, as this client reports it or as redis-py does (which drops the prefix)."""
    return isinstance(exc, NoScriptError) or (
        isinstance(exc, ResponseError) and str(exc).startswith("NOSCRIPT")
    )


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class Client(Protocol):
    """What the limiter needs of a Redis client: `RespClient` (one server) and
    `gateway.limits.cluster.ClusterClient` (a Redis Cluster) both have it."""

    timeout: float

    async def call(self, *args: Arg, delay: float = 0.0) -> Any: ...

    async def send(self, command: bytes, delay: float = 0.0) -> Any: ...

    def send_nowait(self, command: bytes, delay: float = 0.0) -> asyncio.Future[Any] | None: ...

    def idle(self) -> bool: ...

    def flush(self) -> None: ...

    async def aclose(self) -> None: ...


class Script:
    """A Lua script run by its SHA1, loaded on demand (NOSCRIPT -> EVAL, which caches it)."""

    def __init__(self, client: Client, source: str) -> None:
        self.client = client
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self.evalsha = pack_items(("EVALSHA", self.sha))
        """The packed start of every call, after the array's header."""

    async def __call__(self, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        return await self.run(self.head(keys, (), len(args)) + pack_items(args))

    def head(self, keys: Sequence[str], args: Sequence[Arg], more: int) -> bytes:
        """The start of an EVALSHA of this script with `keys`, `args` and then `more`
        arguments, packed once for many calls: each call adds `pack_items(its args)`."""
        fixed = ("EVALSHA", self.sha, len(keys), *keys, *args)
        return b"*%d\r\n" % (len(fixed) + more) + pack_items(fixed)

    async def run(self, command: bytes, delay: float = 0.0) -> Any:
        """Send an EVALSHA of this script (`head` + the rest); after a NOSCRIPT (Redis
        restarted or flushed its scripts) the script is loaded and the call sent again."""
        try:
            return await self.client.send(command, delay)
        except ResponseError as exc:
            if not is_noscript(exc):
                raise
        return await self.run_again(command)

    async def run_again(self, command: bytes) -> Any:
        """`run` after its call was answered NOSCRIPT: loads the script, sends it again."""
        await self.load()
        return await self.client.send(command)

    async def load(self) -> None:
        await self.client.call("SCRIPT", "LOAD", self.source)
