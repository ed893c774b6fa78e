"""One HTTP/1.1 connection of the native transport: the request's bytes, the response parsed.

`Connection` is an `asyncio.Protocol` with httptools (llhttp, the parser uvicorn uses)
reading the responses: one request at a time, status and headers handed over once the head
ended, then each socket read's body bytes as they arrive, never re-chunked. `encode` writes
a request's bytes (in absolute form for an http origin reached through a proxy).

The head's fields are not taken from llhttp one by one (its `on_header` callback cost ~2,200
instructions a field, a real provider's answer has ~24): the reads since the request are
kept until the head ended, and its field lines are then cut from them in one `split`, as
`Field: value` lines (`field_pairs` makes them pairs, for whoever reads them all). llhttp
has checked the head by then, strictly: CRLF line ends only, no obs-fold, no whitespace
before a colon, a token for a name; so the lines are exactly the fields llhttp saw, and a
value is what follows the colon and its spaces and tabs (trailing whitespace kept, as llhttp
keeps it). Trailers are not kept at all.

Reads pause the socket (`pause_reading`) when more than `HIGH_WATER` bytes wait unread, so
a slow reader holds at most that much per connection. A response's head is bounded:
`MAX_HEAD` bytes, httpx's bound (status line and header fields, informational answers'
heads included), and `MAX_FIELDS` fields of at most `MAX_FIELD` bytes each (checked when
the head ended: until then it is only bytes, bounded by `MAX_HEAD`); so are the bytes
between two body parts (chunk framing, extensions, trailers). Past a bound the response
fails with `MalformedResponse` and the connection closes; llhttp bounds none of these
itself.

What it leaves to others: pooling and timeouts' defaults (`gateway.transports.native`),
proxies' tunnels (`gateway.transports.proxy`), and `HEAD` (a response to it has no body,
which the parser cannot be told; the transport refuses to send one). An informational
answer (`100 Continue`) is skipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

import httptools
import httpx

from gateway.egress import Proxy
from gateway.transports.errors import MalformedResponse

HIGH_WATER = 256 * 1024
MAX_HEAD = 100 * 1024
"""httpcore's bound (its h11 `max_incomplete_event_size`), so an answer httpx takes, this
transport takes. aiohttp allows 8190 bytes a field and h11 16 KiB a head by default."""
MAX_FIELD = 16 * 1024
MAX_FIELDS = 256
Origin = tuple[bytes, str, int]
"""Scheme, host and port: what a connection serves, and what the pool files it under."""


class Pool(Protocol):
    """What a connection tells its pool (`NativeTransport`)."""

    def lost(self, conn: Connection) -> None:
        """The connection closed: it is no longer open, nor idle."""

    def release(self, conn: Connection) -> None:
        """Its response was read to the end: keep it for the next request, or close it."""


class _OverBound(Exception):
    """Raised in a parser callback to stop llhttp where a bound was passed."""


_LOST = httptools.HttpResponseParser(None)
"""The parser of every closed connection: nothing is fed to a closed connection, and its
own parser, whose callbacks are its methods, would keep it (its transport, futures and
lists) in a reference cycle until a full collection. After a burst of 3,000 streams the
pool closed 1,391 connections it could not keep idle, all of them waiting there."""


class Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: one request at a time, the response parsed as it arrives."""

    # Slots: a burst makes one connection per stream, and a connection with a dict for its
    # 26 attributes cost ~900 instructions more to make, fill and free (callgrind).
    __slots__ = (
        "__weakref__",
        "_buffered",
        "_closed",
        "_feeding",
        "_fields",
        "_head",
        "_head_at",
        "_head_ended",
        "_head_left",
        "_heard",
        "_informational",
        "_loop",
        "_over",
        "_parser",
        "_paused",
        "_reads",
        "_started",
        "_status",
        "_transport",
        "_waiter",
        "chunks",
        "complete",
        "error",
        "idle_since",
        "listener",
        "origin",
        "pool",
        "pooled",
        "reusable",
    )

    def __init__(
        self, pool: Pool, origin: Origin, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        self.pool = pool
        self.origin = origin
        self.idle_since = 0.0
        self.pooled = False
        """Whether it may be among the pool's idle connections (set by the pool)."""
        self.reusable = False
        # The running loop, when the caller has it at hand: `get_running_loop()` makes a
        # getpid() system call on Python 3.11, and a burst opens a connection per stream.
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._closed = False
        self._head: asyncio.Future[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._reads: list[bytes] = []
        """The reads since the request, until its answer's head ended (see the module
        docstring): at most `MAX_HEAD` bytes and one read."""
        self._head_at = 0
        """Where in the joined `_reads` the next head starts (past informational answers)."""
        self._fields: list[bytes] = []
        """The head's field lines (`name: value`), once the head ended."""
        self._status = 0
        self._informational = False
        self._started = False
        self._head_ended = False
        """The current answer's head ended (its status and fields are `_status`, `_fields`)."""
        self.chunks: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self.complete = False
        self.error: httpx.TransportError | None = None
        self.listener: Callable[[bytes, bool], None] | None = None
        """Push mode (`NativeBody.listen`): called instead of waking a reader, with the
        body bytes it takes (see `_notify`). Nothing waits unread while it is set."""
        self._feeding = False
        self._heard = False
        self._head_left = MAX_HEAD
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
        """Write one request; the response's status and header fields once they arrived."""
        await self.start(data, read_timeout)
        status, lines = self.head()
        return status, field_pairs(lines)

    def start(self, data: bytes, read_timeout: float | None) -> Awaitable[None]:
        """`send` in two steps, without a coroutine of its own: write one request, and give
        what to await until the response's head arrived; then `head()`. (The native
        transport's `send_raw` awaits it straight from the request's task.)"""
        assert self._transport is not None
        self._reads.clear()
        self._head_at = 0
        self._head_left = MAX_HEAD
        self._started = self.complete = self.reusable = self._head_ended = False
        self.error = None
        self._head = head = self._loop.create_future()
        self._transport.write(data)
        if read_timeout is None and self.error is None and not self._closed:
            # A stream's request (no read timeout): the head's future itself, without
            # `_wait`'s coroutine (`head()` raises the failure that woke it, if any).
            return head
        return self._wait(head, read_timeout)

    def head(self) -> tuple[int, list[bytes]]:
        """After `start`'s awaitable: the response's status and its head's field lines (see
        `field_pairs`), or the failure that ended the wait."""
        if self.error is not None:
            raise self.error
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
        all the read's body bytes at once, as a pulling reader does: `listener(data, last)`,
        the bytes taken as `take` takes them (b"" when the read brought none) and whether
        the body ended with them (`complete`). The bytes are handed over rather than left
        for the listener to take: that is two calls less on every relayed read."""
        listener = self.listener
        if listener is None:
            self._wake(self._waiter)
        elif self._feeding:
            self._heard = True
        else:
            listener(self.take(), self.complete)

    def _fail(self, error: httpx.TransportError) -> None:
        if self.error is None and not self.complete:
            self.error = error
        self.reusable = False
        self._wake(self._head)
        self._notify()

    # --- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport: no isinstance here.
        # (No cast(): a function call for every new connection.)
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        # httptools joins a header field's pieces until it ends: an answer whose head never
        # ends would hold all of it. `_head_left` counts the bytes fed since the last body
        # part or the end of the head, a read at a time, and the parser is never fed past
        # it. (A body part or a head's end restarts the count mid-read: the rest of that read
        # is not counted, so the bound holds to within one read.)
        error: MalformedResponse | None = None
        if not self._head_ended:
            self._reads.append(data)  # the head's bytes, cut into fields once it ended
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
        elif heard and (listener := self.listener) is not None:
            # `_notify`'s, once the read was parsed. The usual read brought one body piece:
            # it is what `take` would return, and the rest of `take` has nothing to do in
            # push mode (`on_body` counts nothing towards the high-water mark while a
            # listener is set, and one is set only once `take` emptied the connection, so
            # the socket is not paused): a call less per relayed read. Emptied by `clear`, as
            # `take` does: `pop` would shrink the list's allocation, a realloc every read.
            chunks = self.chunks
            if len(chunks) == 1:
                data = chunks[0]
                chunks.clear()
                listener(data, self.complete)
            else:
                listener(self.take(), self.complete)

    def _feed_bounded(self, view: memoryview) -> None:
        """A read longer than the count allows: fed up to the bound, then on while a body part
        or the head's end restarted the count. Raises as `feed_data` does."""
        while len(view) > self._head_left:
            left = self._head_left
            self._head_left = 0
            self._parser.feed_data(view[:left])
            if self._head_left == 0:
                if self._head is not None and self._head.done():
                    self._over = f"more than {MAX_HEAD} bytes between two body parts"
                else:
                    self._over = f"a response head over {MAX_HEAD} bytes"
                raise httptools.HttpParserError(self._over)
            view = view[left:]
        self._head_left -= len(view)
        self._parser.feed_data(view)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._parser = _LOST
        self.reusable = False
        self.pool.lost(self)
        if self.complete:
            return
        if (
            self._head is not None
            and self._head.done()
            and not (self._head_ended and self._has_length())
        ):
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

    # No `on_header`: without it httptools asks llhttp for no field callbacks at all.

    def on_headers_complete(self) -> None:
        lines = self._head_lines()
        if lines is None:
            raise _OverBound  # stops the parser; data_received fails the response
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            self._informational = True  # its end is skipped; the real answer follows
            return  # its head counts towards the real answer's
        self._head_left = MAX_HEAD
        self._status = status
        self._fields = lines
        self._reads = []  # not clear(): `lines` came from them, nothing else needs them
        # Whether the body has a length is asked only if the connection closes before it
        # ended (`_has_length`): looking through the fields here cost every answer ~2.4k
        # instructions (callgrind, three fields).
        self._head_ended = True
        head = self._head  # `_wake`, inlined: a call less per answer (~300 instructions)
        if head is not None and not head.done():
            head.set_result(None)

    def _has_length(self) -> bool:
        """Whether the ended head gave the body a length or chunked encoding (or none, by
        its status): if not, the body ends where the connection does."""
        if self._status in (204, 304):
            return True
        for name, value in field_pairs(self._fields):
            # By length first: most fields are neither, and need no lower-cased copy.
            size = len(name)
            if (size == 14 and name.lower() == b"content-length") or (
                size == 17 and name.lower() == b"transfer-encoding" and b"chunked" in value.lower()
            ):
                return True
        return False

    def _head_lines(self) -> list[bytes] | None:
        """The field lines of the head llhttp just ended, cut from the reads since the
        request; None, with `_over` saying why, past a field bound."""
        reads = self._reads
        data = reads[0] if len(reads) == 1 else b"".join(reads)
        at = self._head_at
        end = -1
        if self._started and at < len(data):
            if data[at] != 72:  # not b"H": llhttp skips CR and LF before a status line
                while data[at] in (10, 13):
                    at += 1
            # llhttp took the head: its first empty line ends it (CRLF only, no folding).
            end = data.find(b"\r\n\r\n", at)
        if end < 0:
            # The answer began before this request was written (unasked-for bytes on an
            # idle connection): its head is not in the reads.
            self._over = "an answer that began before its request"
            return None
        self._head_at = end + 4
        lines = data[at:end].split(b"\r\n")
        del lines[0]  # the status line
        if len(lines) > MAX_FIELDS:
            self._over = f"more than {MAX_FIELDS} header fields"
            return None
        if end - at > MAX_FIELD and any(
            len(name) + len(value.lstrip(b" \t")) > MAX_FIELD
            for name, _, value in (line.partition(b":") for line in lines if len(line) > MAX_FIELD)
        ):
            self._over = f"a header field over {MAX_FIELD} bytes"
            return None
        return lines

    def on_body(self, body: bytes) -> None:
        self._head_left = MAX_HEAD
        self.chunks.append(body)
        # `_notify`, inlined (a call less per read): the parser calls this only from
        # `feed_data`, so a listener always hears after the read, in `data_received`.
        if self.listener is not None:
            # Not counted towards the high-water mark: the listener takes them all at the
            # end of this read, so no bytes wait unread in push mode.
            self._heard = True
            return
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        waiter = self._waiter  # `_wake`, inlined too
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        self.complete = True
        self.reusable = self._parser.should_keep_alive()
        head = self._head  # `_wake`, inlined as above
        if head is not None and not head.done():
            head.set_result(None)
        self._notify()


def field_pairs(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    """A head's field lines (`Connection.head`) as (name, value) pairs, as llhttp reads
    them: the name up to the colon, the value past the spaces and tabs after it."""
    pairs = []
    for line in lines:
        name, _, value = line.partition(b":")
        pairs.append((name, value.lstrip(b" \t")))
    return pairs


def encode(request: httpx.Request, body: bytes, proxy: Proxy | None = None) -> bytes:
    """The request's bytes; to an http `proxy`, its target in absolute form."""
    url = request.url
    target = url.raw_path
    pairs = request.headers.raw
    if proxy is not None:
        target = b"http://%s%s" % (url.netloc, target)
        if (authorization := proxy.authorization) is not None:
            pairs = [*pairs, (b"proxy-authorization", authorization.encode("ascii"))]
    lines = [b"%s %s HTTP/1.1\r\n" % (request.method.encode("ascii"), target)]
    # On the raw pairs: `in request.headers` would have httpx work out the headers' text
    # encoding (every name and value decoded) for one lookup, on each request.
    kept = [p for p in pairs if p[0].lower() != b"transfer-encoding"]
    if len(kept) != len(pairs):
        # A streamed body was read whole above: it goes out with its length instead.
        pairs = kept
        pairs.append((b"content-length", b"%d" % len(body)))
    lines.extend(b"%s: %s\r\n" % pair for pair in pairs)
    lines.append(b"\r\n")
    lines.append(body)
    return b"".join(lines)
