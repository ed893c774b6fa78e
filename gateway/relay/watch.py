"""The race around one open request: client disconnect, timeouts, keep-alive, shutdown.

A stream is a race between relaying, keep-alive, disconnect and shutdown (sse-starlette's
picture). Here the relay is the request's own task, and everything else watches it from the
side at almost no cost per chunk:

- the server's `DisconnectHook` (under `gateway serve`), or else one task waiting on ASGI
  `receive()` for `http.disconnect`;
- one timer (re-armed lazily, about once per keep-alive interval) checks the first-token,
  idle, total and slow-client deadlines and sends `: keep-alive` comments during long
  upstream silence; the watches share the event loop's timers (`Alarms`);
- shutdown calls `end("shutdown")` when the grace period runs out.

Whoever wins calls `end(outcome)`, which cancels the request task once; the relay catches
that cancellation, asks `ended` why, and finishes the stream with that outcome. A
cancellation the watch did not cause (the server's own) is re-raised untouched.

The first-token timeout is the one deadline that does not end the request: it fails one
upstream attempt, and the next one (a retry, another deployment) gets a deadline of its
own. The attempt opens a window (`expect_first_token`); when the timer finds it still open
past its deadline it cancels the task without setting `ended`, and the attempt, on that
cancellation, asks `first_token_late()` whether it was this (then it is a timeout, and the
cancellation is taken back, as `asyncio.timeout` does). The same timer as the others, rather
than an `asyncio.timeout` scope per attempt: that scope cost a timer, an object and its
context manager per request, for a deadline that almost never passes.

Each attempt runs under its deployment's timeouts (a model's or deployment's own, else the
gateway's, resolved at config load: `ModelConfig.timeouts`): the attempt hands them over
(`expect_first_token`, `use`), and only when they are not the watch's own object does
anything change. Its first-token window is timed by them, then, once it answered, the
stream's idle and keep-alive. `total` counts from the request's start across every attempt,
as it always did; its length is the attempt's in flight, so a fallback model with a longer
`total` gets it, and one with a shorter one that already ran out ends the request.
"""

from __future__ import annotations

import asyncio
import contextlib
from math import ceil
from time import perf_counter

from starlette.types import Receive, Send

from gateway.asgi import DisconnectHook
from gateway.config import Timeouts
from gateway.errors import Outcome

KEEPALIVE = b": keep-alive\n\n"


def first_check_s(timeouts: Timeouts) -> float:
    """When a stream's watch first checks, in seconds from its start: the earliest of the
    first-token deadline and the relay's first keep-alive/idle check, so that neither the
    first attempt nor the start of the relay has to move the timer (a check that finds
    nothing due just sets the timer for the next one). Computed once, not per request."""
    return min(timeouts.first_token, timeouts.keepalive, timeouts.idle)


GRAIN = 0.01
"""The shared timers' resolution, in seconds: a watch's check runs at most this long after
the moment it asked for (never before it)."""


class Alarms:
    """The watches' timers, shared: one event-loop timer for all the watches due within the
    same `GRAIN` of time, instead of one per watch.

    A loop timer costs 1-2.5 µs to set and cancel (uvloop: a libuv handle made, then closed
    on a later turn), and a stream set one and cancelled it: its first check is 15 s away
    (the keep-alive), so it almost never ran. A burst of 3,000 requests within a second now
    sets about 100, one per 10 ms; a watch joins its slot's set and leaves it, and the last
    to leave cancels the slot's timer. The other design, one periodic sweep over every open
    watch (nginx-like), was not taken: it costs per open stream on every tick, idle or not,
    and would make every deadline as coarse as its period.

    Made once per event loop (the relay makes it on its first request), which it keeps at
    hand for the watches (`loop`): `asyncio.get_running_loop()` costs a `getpid()` call.
    """

    __slots__ = ("_slots", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._slots: dict[int, _Slot] = {}

    def add(self, watch: StreamWatch, when: float) -> _Slot:
        """Have `watch._check()` called at `when` (perf_counter()), or up to `GRAIN` after;
        the slot it joined, to `leave`."""
        key = ceil(when / GRAIN)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot(self, key)
        slot.add(watch)
        return slot

    def pending(self) -> int:
        """How many loop timers are set (for tests)."""
        return len(self._slots)


class _Slot(set["StreamWatch"]):
    """The watches due within one `GRAIN` of time, and the loop timer for all of them."""

    __slots__ = ("_alarms", "_handle", "_key")

    def __init__(self, alarms: Alarms, key: int) -> None:
        super().__init__()
        self._alarms = alarms
        self._key = key
        # Set for the slot's end, so no watch in it is checked before its moment.
        delay = key * GRAIN - perf_counter()
        self._handle = alarms.loop.call_later(delay if delay > 0.0 else 0.0, self._fire)

    def leave(self, watch: StreamWatch) -> None:
        self.discard(watch)
        if not self:
            self._handle.cancel()
            slots = self._alarms._slots
            if slots.get(self._key) is self:  # not once fired: a new slot may have its key
                del slots[self._key]

    def _fire(self) -> None:
        slots = self._alarms._slots
        if slots.get(self._key) is self:
            del slots[self._key]
        watches = tuple(self)
        self.clear()
        for watch in watches:
            if watch._timer is not self:
                continue  # it left (stopped) while an earlier one was checked
            try:
                watch._check()
            except Exception as exc:  # as the loop does for a timer's callback: log, go on
                self._alarms.loop.call_exception_handler(
                    {"message": "StreamWatch check failed", "exception": exc}
                )


class StreamWatch:
    __slots__ = (
        "_alarms",
        "_cancelling",
        "_disconnect_task",
        "_first_token_by",
        "_first_token_late",
        "_hook",
        "_keepalive_task",
        "_last_keepalive",
        "_send",
        "_timer",
        "_timer_at",
        "deadline",
        "ended",
        "last_read",
        "loop",
        "relaying",
        "sending_since",
        "task",
        "timeouts",
    )

    def __init__(self, send: Send, timeouts: Timeouts, alarms: Alarms | None = None) -> None:
        """`alarms`: the loop's shared timers (the relay's); by default, a set of its own."""
        if alarms is None:
            alarms = Alarms(asyncio.get_running_loop())
        self._alarms = alarms
        self.loop = loop = alarms.loop
        task = asyncio.current_task(loop)
        assert task is not None
        self.task = task
        self._send = send
        self.timeouts = timeouts
        """The attempt's in flight, then the answer's (`use`); until the first, these."""
        now = perf_counter()
        self.deadline = now + timeouts.total
        self.last_read = now
        self._last_keepalive = now
        self.sending_since = 0.0
        """perf_counter() when a send to the client started and has not finished; 0 if none."""
        self.relaying = False
        """True once the response started: idle and keep-alive rules apply from then."""
        self.ended: Outcome | None = None
        self._timer: _Slot | None = None
        """The shared timer's slot this watch is in, when it is set."""
        self._timer_at = 0.0
        """perf_counter() the timer is set for (when `_timer` is not None)."""
        self._first_token_by = 0.0
        """The open first-token window's deadline (perf_counter()); 0 when none is open."""
        self._first_token_late = False
        self._cancelling = 0
        self._disconnect_task: asyncio.Task[None] | None = None
        self._hook: DisconnectHook | None = None
        self._keepalive_task: asyncio.Task[None] | None = None

    def start(
        self, receive: Receive, hook: DisconnectHook | None = None, first_check: float = 0.0
    ) -> None:
        """Watch from now on. `first_check`, for a stream (whose first attempt opens a
        first-token window at once, `expect_first_token`): `first_check_s(timeouts)`."""
        if hook is None:
            self._disconnect_task = self.loop.create_task(self._watch_disconnect(receive))
        elif hook.lost:
            self.loop.call_soon(self.end, "client_cancelled")
        else:
            self._hook = hook
            hook.callback = self._client_gone
        if first_check:
            when = perf_counter() + first_check
            self._arm(when if when < self.deadline else self.deadline)
        else:
            self._arm(self.deadline)

    def use(self, timeouts: Timeouts) -> None:
        """An attempt under other timeouts starts (another model's or deployment's): its
        first token, idle and keep-alive are timed by them from now on, and the request's
        total by theirs, still from its start."""
        self.deadline += timeouts.total - self.timeouts.total
        self.timeouts = timeouts
        if self._timer is not None and self._timer_at > self.deadline:
            self._arm(self.deadline)

    def expect_first_token(self, timeouts: Timeouts | None = None) -> None:
        """An upstream attempt starts, under `timeouts` (its deployment's; None: the
        watch's): its first event is due within their first-token timeout. Close the
        window with `first_token_seen()` on every way out."""
        if timeouts is not None and timeouts is not self.timeouts:
            self.use(timeouts)
        by = perf_counter() + self.timeouts.first_token
        self._first_token_by = by
        self._first_token_late = False
        self._cancelling = self.task.cancelling()
        if self._timer is None or self._timer_at > by:
            self._arm(by)
        # else the timer fires earlier (or at the previous attempt's deadline, set in
        # `start`, a moment before): `_check` then sets it for this deadline.

    def first_token_seen(self) -> None:
        """The attempt's window closes (its first event came, or it failed)."""
        self._first_token_by = 0.0

    def first_token_late(self) -> bool:
        """On a cancellation in the window: whether it was the first-token timeout (then it
        is taken back, and the attempt fails with a timeout) rather than the watch's own
        end or the server's cancellation (re-raise those)."""
        if not self._first_token_late:
            return False
        self._first_token_late = False
        return self.task.uncancel() <= self._cancelling and self.ended is None

    def _client_gone(self) -> None:
        self.end("client_cancelled")

    def start_relaying(self) -> None:
        self.relaying = True
        now = self.last_read = self._last_keepalive = perf_counter()
        t = self.timeouts
        due = now + min(t.keepalive, t.idle)
        if self._timer is None or self._timer_at > due:
            self._arm(due)

    def end(self, outcome: Outcome) -> None:
        if self.ended is None:
            self.ended = outcome
            self.task.cancel()

    def stop(self) -> None:
        """Stand down. Call before the relay's first await after its loop ended, so no
        cancellation can arrive after the outcome was decided."""
        if self._timer is not None:
            self._timer.leave(self)
            self._timer = None
        if self._hook is not None:
            self._hook.callback = None
        for task in (self._disconnect_task, self._keepalive_task):
            if task is not None and not task.done():
                task.cancel()

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.leave(self)
        self._timer_at = when
        self._timer = self._alarms.add(self, when)

    def _check(self) -> None:
        """The timer's turn (`_Slot._fire`, which took this watch out of its slot)."""
        self._timer = None
        if self.ended is not None:
            return
        now = perf_counter()
        if now >= self.deadline:
            self.end("upstream_error")  # total time ran out; the relay words it as a timeout
            return
        if not self.relaying:
            by = self._first_token_by
            if by and now >= by:
                # The attempt's first event is late: fail that attempt, not the request.
                self._first_token_by = 0.0
                self._first_token_late = True
                self.task.cancel()
                by = 0.0
            self._arm(min(self.deadline, by) if by else self.deadline)
            return
        t = self.timeouts
        if self.sending_since and now - self.sending_since >= t.idle:
            self.end("slow_client")
            return
        silent = now - self.last_read
        if silent >= t.idle:
            self.end("idle_timeout")
            return
        if silent >= t.keepalive and now - self._last_keepalive >= t.keepalive:
            self._last_keepalive = now
            if self._keepalive_task is None or self._keepalive_task.done():
                self._keepalive_task = self.loop.create_task(self._keepalive())
        next_at = min(
            self.deadline,
            self.last_read + t.idle,
            max(self.last_read, self._last_keepalive) + t.keepalive,
        )
        if self.sending_since:
            next_at = min(next_at, self.sending_since + t.idle)
        self._arm(max(next_at, now + 0.01))

    async def _keepalive(self) -> None:
        with contextlib.suppress(OSError):
            await self._send({"type": "http.response.body", "body": KEEPALIVE, "more_body": True})

    async def _watch_disconnect(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.end("client_cancelled")
                return
