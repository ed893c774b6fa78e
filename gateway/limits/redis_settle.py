"""The Redis limiter's settles on their way: queued, batched into script calls, answered.

Nobody waits for a settle, and under load many end close together, so `RedisLimiter`
queues them here (`SettleQueue.add`) instead of sending one script call each: the queue
leaves as one SETTLE call per `SETTLE_DELAY_S` (at once on an idle connection; per Cluster
slot, at most `SETTLES_PER_CALL` a call), or rides in the next admission's own call
(`take`, used by `RedisLimiter.admit`). Replies are handled by callbacks; a failure counts
one backend error per settle it carried (its reservation stays counted and its lease
expires by itself, see `gateway.limits.redis_store`). Split from the limiter because this
is the one part of it with its own state and timing: what a settle sends and when,
apart from what an admission decides.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterable
from typing import Any

from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError

from gateway.limits.base import Reservation
from gateway.limits.resp import Client, Script, is_noscript, pack_items

BACKEND_ERRORS: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError)
"""What counts as "the backend is unreachable". Redis's own ConnectionError and
TimeoutError are RedisErrors; the builtin ones (and asyncio's) are OSErrors. Other Redis
errors (READONLY after a failover, OOM, LOADING) leave the limits just as unknown, and so
do redis-py's Cluster errors that are no RedisError (no node reachable, a slot unserved)."""

SETTLE_DELAY_S = 0.005
"""How long a settle may wait for others to share one script call with. Nobody waits
for a settle, and under load many end close together: one call (one command for Redis to
run, one reply to read) settles them all; on an idle connection a settle leaves at once.
The next admission of this process takes waiting settles along first, so this process
never sees its own finished requests as open; other replicas may, for at most this long
(as if the settle had crossed a slower network)."""


SETTLES_PER_CALL = 100
"""At most this many settles in one script call. A script holds Redis for its whole run
(a settle's part is ~10 µs), so a burst of 3,000 ends in one call would stall every other
client's call for ~30 ms; in calls of 100 the per-call cost is still shared 100 ways."""

Settle = tuple[int, bytes, bytes]
"""One queued settle: its Cluster slot (0 on one Redis), packed keys, packed arguments."""


class SettleQueue:
    """The settles of one limiter not sent yet, and those sent and not answered.

    `keys(key_id)` gives a key's tpm, quota and leases key names; `failed(exc, count)` is
    called when a call carrying `count` settles failed, `recovered()` when one succeeded.
    """

    def __init__(
        self,
        client: Client,
        script: Script,
        *,
        cluster: bool,
        keys: Callable[[str], tuple[str, str, str]],
        failed: Callable[[BaseException, int], None],
        recovered: Callable[[], None],
    ) -> None:
        self._client = client
        self._script = script
        self._cluster = cluster
        self._keys = keys
        self._failed = failed
        self._recovered = recovered
        self.waiting: list[Settle] = []
        """Settles waiting to leave together, oldest first."""
        self._timer: asyncio.TimerHandle | None = None
        self._key_parts: dict[str, tuple[int, bytes]] = {}
        """key id -> its Cluster slot (0 on one Redis) and its packed keys of a settle."""
        self._sent: set[asyncio.Future[Any]] = set()
        """Settle calls sent and not answered yet (`aclose` waits for them)."""

    def _pack(self, reservation: Reservation, used_tokens: int, used_cost: int) -> Settle:
        """One settle, packed: what `add` queues and `settle_now` sends."""
        keys = self._key_parts.get(reservation.key_id)
        if keys is None:
            tpm_key, quota_key, leases_key = self._keys(reservation.key_id)
            slot = key_slot(tpm_key.encode()) if self._cluster else 0
            keys = (slot, pack_items((tpm_key, quota_key, leases_key)))
            self._key_parts[reservation.key_id] = keys
        at = b"%.6f" % reservation.admitted_at
        delta = b"%d" % (used_tokens - reservation.tokens)
        spent = b"%d" % (used_cost - reservation.cost)
        lid = reservation.lease.encode()
        args = b"$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
            len(at), at, len(delta), delta, len(lid), lid, len(spent), spent
        )  # fmt: skip
        return keys[0], keys[1], args

    def add(self, reservation: Reservation, used_tokens: int, used_cost: int) -> None:
        """Queue the settle of `reservation` to leave with the others of the next
        `SETTLE_DELAY_S` (at once on an idle connection)."""
        waiting = self.waiting
        waiting.append(self._pack(reservation, used_tokens, used_cost))
        if len(waiting) == 1:
            if self._client.idle():
                # Nothing to batch with, so no reason to wait. Leaving at once, the slot it
                # frees is free for another replica's next admission too (a client sending
                # one request after another through two replicas of a max_concurrent 1 key
                # would otherwise meet its own finished request).
                self.send()
            elif self._timer is None:
                # Kept when an admission takes the settles along (one timer per
                # SETTLE_DELAY_S at most, not one per settle): it then finds none or newer ones.
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(SETTLE_DELAY_S, self._timed)

    def take(self) -> list[Settle]:
        """The waiting settles, for an admission's call to carry (it runs them first)."""
        waiting, self.waiting = self.waiting, []
        return waiting

    def call(self, count: int, keys: bytes, args: bytes) -> bytes:
        """The EVALSHA of the settle script for `count` settles' packed keys and args."""
        evalsha = self._script.evalsha
        return b"*%d\r\n" % (3 + 7 * count) + evalsha + pack_items((3 * count,)) + keys + args

    async def settle_now(self, reservation: Reservation, used_tokens: int, used_cost: int) -> None:
        """One settle in a call of its own, its reply awaited (`RedisLimiter.settle`)."""
        _, keys, args = self._pack(reservation, used_tokens, used_cost)
        await self._run(self.call(1, keys, args), 1)

    def send(self) -> None:
        """The waiting settles off as one call per Cluster slot (one call on one Redis)."""
        settles = self.take()
        if not settles:
            return
        batches: Iterable[list[Settle]] = (settles,)
        if self._cluster:
            slots: dict[int, list[Settle]] = {}
            for settle in settles:
                slots.setdefault(settle[0], []).append(settle)
            batches = slots.values()
        for slot_settles in batches:
            for start in range(0, len(slot_settles), SETTLES_PER_CALL):
                self._send_call(slot_settles[start : start + SETTLES_PER_CALL])

    async def aclose(self) -> None:
        """Send what waits, and wait (within the client's timeout) for every reply."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.send()
        if self._sent:
            # Settles queued for a shared write go out now; their replies are waited for.
            self._client.flush()
            await asyncio.wait(set(self._sent), timeout=self._client.timeout + 0.1)

    def _timed(self) -> None:
        self._timer = None
        self.send()

    def _send_call(self, batch: list[Settle]) -> None:
        """One script call settling `batch` (settles of one slot)."""
        count = len(batch)
        command = self.call(count, b"".join(s[1] for s in batch), b"".join(s[2] for s in batch))
        future = self._client.send_nowait(command)
        if future is None:  # no connection open: the task opens one
            self._run_in_task(command, count)
            return
        self._sent.add(future)
        future.add_done_callback(functools.partial(self._answered, command, count))

    def _run_in_task(self, command: bytes, count: int) -> None:
        task = asyncio.get_running_loop().create_task(self._run(command, count))
        self._sent.add(task)
        task.add_done_callback(self._sent.discard)

    async def _run(self, command: bytes, count: int) -> None:
        try:
            await self._script.run(command)
        except BACKEND_ERRORS as exc:
            self._failed(exc, count)
        else:
            self._recovered()

    def _answered(self, command: bytes, count: int, future: asyncio.Future[Any]) -> None:
        self._sent.discard(future)
        if future.cancelled():
            return
        exc = future.exception()
        if exc is None:
            self._recovered()
        elif is_noscript(exc):
            # Redis lost its scripts (a restart, SCRIPT FLUSH): the task path loads it.
            self._run_in_task(command, count)
        elif isinstance(exc, BACKEND_ERRORS):
            self._failed(exc, count)
