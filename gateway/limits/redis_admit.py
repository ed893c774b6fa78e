"""The Redis limiter's admissions that wait together: one script call per API key.

Every admission of one API key runs on one Redis (one Cluster slot), a single thread, so
what Redis spends per admission bounds admissions per second per key across every
replica. While the connection is busy (a burst: the server starts up to 48 requests per
loop turn), a key's first admission of a turn still leaves at once as `ADMIT`
(`AdmitBatches.first`), and its next ones that turn are queued here (`AdmitBatches.join`)
and leave at the next turn as one `ADMIT_MANY` call per key (`gateway.limits.redis_lua`:
the counts kept in Lua locals, each hash read and written once), at most
`ADMITS_PER_CALL` a call; a key with one waiting sends the plain `ADMIT`. Each admission
gets its own reply, the one `ADMIT` would have given it called in turn. An admission on an
idle connection, or the first of its key in a turn, takes `RedisLimiter.admit`'s own path
as before: most batches would be of one, each paying a future and a callback for nothing
(docs/performance.md, session 15).

A call carries the settles waiting to leave (they run first, as in `ADMIT`). A call that
fails fails each of its admissions (each then counts one backend error and follows
`limits_backend_failure`), and counts one per settle it carried; NOSCRIPT loads the script
and sends the call again. Deliberately not done: batching admissions of different keys
(each key's call runs on its own slot) or with different limits or time overrides (a batch
has one set of limits and one clock reading).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

from redis.exceptions import ResponseError

from gateway.limits.redis_settle import BACKEND_ERRORS, SETTLES_PER_CALL, Settle, SettleQueue
from gateway.limits.resp import Client, RespClient, Script, is_noscript, pack_items

ADMITS_PER_CALL = 64
"""At most this many admissions in one script call: a script holds Redis for its whole
run, and the reply (one line of ~60 bytes each) stays small."""

Head = tuple[Any, Any, bytes, bytes, bytes]
"""A key's cached call parts (`RedisLimiter._admit_heads`): its limits and budget, the
packed start of its single-admission call, its packed keys and its packed fixed args."""


class _Batch:
    """Admissions of one key waiting for the same call, oldest first."""

    __slots__ = ("futures", "head", "loop", "members", "override")

    def __init__(self, head: Head, override: str, loop: asyncio.AbstractEventLoop) -> None:
        self.head = head
        self.override = override
        self.loop = loop
        self.members: list[tuple[int, int, str]] = []
        """(tokens, cost in nano-USD, lease id) of each admission."""
        self.futures: list[asyncio.Future[Any]] = []
        """Each admission's reply (bytes, as `ADMIT`'s)."""


class AdmitBatches:
    """The admissions of one limiter waiting to leave, and those sent and not answered.

    `single` and `many` are the ADMIT and ADMIT_MANY scripts; waiting settles ride along
    (`settles`), and `settles_failed(count)` counts the ones a failed call carried.
    """

    def __init__(
        self,
        client: Client,
        single: Script,
        many: Script,
        settles: SettleQueue,
        settles_failed: Callable[[int], None],
    ) -> None:
        self._client = client
        self._resp = client if isinstance(client, RespClient) else None
        self._single = single
        self._many = many
        self._settles = settles
        self._settles_failed = settles_failed
        self._open: dict[str, _Batch | None] = {}
        """key id -> its batch that admissions can still join, None while the key's first
        admission of this loop turn is the only one (it went as a plain ADMIT)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        """The limiter's loop, asked once (a getpid() system call on 3.11)."""
        self._pending: list[_Batch] = []
        """Batches to send at the next loop turn, in the order they were started."""
        self._handle: asyncio.Handle | None = None
        self._sent: set[asyncio.Future[Any]] = set()
        """Calls sent and not answered yet (`aclose` waits for them)."""

    def first(self, key_id: str) -> bool:
        """True for the key's first admission of this loop turn, which the caller sends at
        once as a plain ADMIT (a lone admission's path and cost, busy connection or not);
        the key's next ones this turn `join` a batch."""
        if key_id in self._open:
            return False
        self._open[key_id] = None
        if self._handle is None:
            self._handle = self._running_loop().call_soon(self.send)
        return True

    def join(
        self, key_id: str, head: Head, override: str, tokens: int, cost: int, lease: str
    ) -> asyncio.Future[Any]:
        """Queue one admission to leave at the next loop turn with the others of its key;
        the future of its reply."""
        batch = self._open.get(key_id)
        if (
            batch is None
            or batch.head is not head
            or batch.override != override
            or len(batch.members) >= ADMITS_PER_CALL
        ):
            batch = self._open[key_id] = _Batch(head, override, self._running_loop())
            self._pending.append(batch)
            if self._handle is None:
                self._handle = batch.loop.call_soon(self.send)
        future: asyncio.Future[Any] = batch.loop.create_future()
        batch.members.append((tokens, cost, lease))
        batch.futures.append(future)
        return future

    def send(self) -> None:
        """Every waiting batch off, one call each, in one write on one Redis."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        pending, self._pending = self._pending, []
        self._open.clear()
        if not pending:
            return
        settles: list[Settle] = []
        if self._settles.waiting:
            resp = self._resp
            if len(self._settles.waiting) <= SETTLES_PER_CALL and resp and resp.connected():
                # They ride in the first call, run first: this process never counts its own
                # finished requests as open. (Connected: the call is queued at once.)
                settles = self._settles.take()
            else:
                self._settles.send()  # ahead of the admissions, in the same write
        for batch in pending:
            self._send_call(batch, settles)
            settles = []
        if self._resp is not None:
            # Written now, not at the turn after (the connection's own flush).
            self._resp.flush()

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    async def aclose(self) -> None:
        """Send what waits, and wait (within the client's timeout) for every reply."""
        self.send()
        if self._sent:
            await asyncio.wait(set(self._sent), timeout=self._client.timeout + 0.1)

    def _command(self, batch: _Batch, settles: list[Settle]) -> tuple[Script, bytes]:
        head, members, override = batch.head, batch.members, batch.override
        count = len(members)
        if count == 1 and not settles:
            return self._single, head[2] + admit_args(*members[0], override)
        if count == 1:
            return self._single, call_with_settles(
                self._single, head, admit_args(*members[0], override), 4, settles
            )
        args = pack_items((override, count)) + b"".join(
            [member_args(*member) for member in members]
        )
        return self._many, call_with_settles(self._many, head, args, 2 + 3 * count, settles)

    def _send_call(self, batch: _Batch, settles: list[Settle]) -> None:
        script, command = self._command(batch, settles)
        answered = functools.partial(self._answered, True, script, command, batch, len(settles))
        future = self._client.send_nowait(command)
        if future is None:  # no connection open: a task opens one
            future = batch.loop.create_task(script.run(command))
        self._sent.add(future)
        future.add_done_callback(answered)

    def _answered(
        self,
        retry: bool,
        script: Script,
        command: bytes,
        batch: _Batch,
        settled: int,
        future: asyncio.Future[Any],
    ) -> None:
        self._sent.discard(future)
        futures = batch.futures
        if future.cancelled():
            for member in futures:
                member.cancel()
            return
        exc = future.exception()
        if exc is None:
            reply = future.result()
            if len(futures) == 1:
                if not futures[0].done():
                    futures[0].set_result(reply)
                return
            if isinstance(reply, list) and len(reply) == len(futures):
                for member, one in zip(futures, reply, strict=True):
                    if not member.done():
                        member.set_result(one)
                return
            exc = ResponseError(f"ADMIT_MANY answered {len(futures)} admissions with {reply!r:.80}")
        if retry and is_noscript(exc):
            # Redis lost its scripts (a restart, SCRIPT FLUSH); nothing ran: loaded, again.
            again = batch.loop.create_task(script.run_again(command))
            self._sent.add(again)
            again.add_done_callback(
                functools.partial(self._answered, False, script, command, batch, settled)
            )
            return
        if settled and isinstance(exc, BACKEND_ERRORS):
            self._settles_failed(settled)
        for member in futures:
            if not member.done():
                member.set_exception(exc if len(futures) == 1 else _copy(exc))


def _copy(exc: BaseException) -> BaseException:
    """A fresh instance per admission, so no two tasks share (and rewrite) one traceback."""
    try:
        return type(exc)(*exc.args)
    except Exception:
        return ResponseError(str(exc))


def call_with_settles(
    script: Script, head: Head, args: bytes, arg_items: int, settles: list[Settle]
) -> bytes:
    """An ADMIT or ADMIT_MANY call on `head`'s key with `args` (`arg_items` items after the
    key's fixed eight) and the waiting `settles` riding in it: their keys after the
    key's five, their args after all the admissions' (`redis_lua.SETTLE_MANY`)."""
    settled = len(settles)
    numkeys = b"%d" % (5 + 3 * settled)
    return b"".join(
        (
            b"*%d\r\n" % (3 + 5 + 8 + arg_items + 7 * settled),
            script.evalsha,
            b"$%d\r\n%b\r\n" % (len(numkeys), numkeys),
            head[3],
            b"".join([settle[1] for settle in settles]),
            head[4],
            args,
            b"".join([settle[2] for settle in settles]),
        )
    )


def admit_args(tokens: int, cost: int, lease: str, override: str) -> bytes:
    """`pack_items((tokens, cost, lease, override))`, for the types they always have."""
    t, ls = b"%d" % tokens, lease.encode()
    if not cost and not override:  # production without prices: two of the four are fixed
        return b"$%d\r\n%b\r\n$1\r\n0\r\n$%d\r\n%b\r\n$0\r\n\r\n" % (len(t), t, len(ls), ls)
    c, o = b"%d" % cost, override.encode()
    return b"$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
        len(t), t, len(c), c, len(ls), ls, len(o), o
    )  # fmt: skip


def member_args(tokens: int, cost: int, lease: str) -> bytes:
    """`pack_items((tokens, cost, lease))`: one admission's part of an ADMIT_MANY call."""
    t, c, ls = b"%d" % tokens, b"%d" % cost, lease.encode()
    return b"$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(t), t, len(c), c, len(ls), ls)
