"""Pacing request starts in a connection storm: at most N new requests per event-loop turn.

When hundreds of clients connect at once, every request's setup (auth, validation, a Redis
admission, the upstream call) runs in the same few event-loop turns, and the streams
already running wait behind it: their next tokens reach their clients tens of milliseconds
late. `max_requests_per_loop_turn` bounds how many requests start in one turn; the others
wait, in arrival order, for the next turns, and between turns the loop reads and relays the
running streams' tokens (Envoy's `max_requests_per_io_cycle` does this for its workers).

The default, 48, was chosen by measurement (docs/performance.md): with 500 streams
arriving at once on the benchmark's 2-core box it cut the running streams' inter-chunk p99
and cost the burst nothing in time to first token, since smaller batches of admissions and
upstream calls keep Redis and the provider working while the gateway sets up the next one.
With another process hogging a core it could cost the burst's last requests up to 35 ms,
and a budget of 8 cost them over 100 ms on a slower box. 0 turns it off.
"""

from __future__ import annotations

import asyncio
from collections import deque


class StartBudget:
    """At most `per_turn` calls of `take()` return in one event-loop turn; the rest wait
    in FIFO order. A turn's count starts over when the loop comes round again."""

    _loop: asyncio.AbstractEventLoop
    """The loop of the turns scheduled (set whenever the first of a run of them is, unless
    the budget was made for one loop)."""

    def __init__(self, per_turn: int, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """`loop`: the one loop all `take`s will run on (the gateway's runtime lives on its
        loop); without it, the running loop is asked when a run of turns starts, which on
        a lightly loaded gateway is nearly every request (a getpid() system call on 3.11)."""
        if per_turn < 1:
            raise ValueError("per_turn must be at least 1")
        self.per_turn = per_turn
        self._used = 0
        self._scheduled = False
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._bound = loop is not None
        if loop is not None:
            self._loop = loop

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def take_now(self) -> bool:
        """Take a start of this turn if it has room and nobody is queued; False: wait for
        one with `take()`. The usual case without a coroutine."""
        if self._used < self.per_turn and not self._waiting:
            self._used += 1
            self._next_turn_soon()
            return True
        return False

    async def take(self) -> None:
        """Return at once while this turn has room and nobody is queued; else wait."""
        if self.take_now():
            return
        # take_now() says no only while a turn is scheduled (this turn is full, or others
        # wait): its loop is the running one, and a burst's waiters need no
        # get_running_loop() (a getpid() system call on 3.11) each.
        loop = self._loop if self._scheduled else asyncio.get_running_loop()
        ticket = loop.create_future()
        self._waiting.append(ticket)
        self._next_turn_soon()
        await ticket  # a cancelled waiter's ticket is cancelled too, and skipped

    def _next_turn_soon(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            if not self._bound:
                self._loop = asyncio.get_running_loop()
            self._loop.call_soon(self._next_turn)

    def _next_turn(self) -> None:
        # Runs once per turn while there is anything to count: lets the queue's head go
        # (their tasks run in the turn after this one, with the count at what they use).
        self._scheduled = False
        self._used = 0
        waiting = self._waiting
        while waiting and self._used < self.per_turn:
            ticket = waiting.popleft()
            if not ticket.done():
                ticket.set_result(None)
                self._used += 1
        if waiting or self._used:
            # The loop running this callback: no get_running_loop() (a getpid() system
            # call on 3.11) for each turn of a busy loop.
            self._scheduled = True
            self._loop.call_soon(self._next_turn)
