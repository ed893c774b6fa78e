"""Finished requests' bookkeeping, off the request path and out of bursts.

The end of a request leaves a `RequestRecord`; counting it in the metrics and rendering its
request log line cost tens of microseconds that no client waits for. Streams that started
together end together, and doing each one's bookkeeping in the event-loop turn it ended would
delay the next tokens of every stream still running. `Finished` queues the records and works
through them a slice at a time, at most `SLICE_S` of work per loop turn, so the running
streams' reads and writes come between slices; a loop with nothing else to do gets through
the queue in back-to-back slices. The first slice waits `LINGER_S` for company: a trickle of
requests (one client at a time) has its bookkeeping done in one go now and then, rather
than a little right when the next request comes in. Past `MAX_QUEUED` records a slice
takes as long as it needs to get back under it, so the queue stays bounded however long the
load lasts.

GET /metrics and shutdown call `drain()` first: a scrape counts every request that ended
before it, and no record is lost on exit. A scrape only drains the worker that answers it,
so with `--workers N` (metrics shared through prometheus_client's multiprocess files) the
first slice does not linger: another worker's requests are counted in the loop turn after
they end, not up to `LINGER_S` later.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from time import perf_counter

from gateway.observability.records import RequestRecord

_log = logging.getLogger(__name__)

SLICE_S = 0.0005
LINGER_S = 0.05
MAX_QUEUED = 2000

Handler = Callable[[RequestRecord], None]


class Finished:
    """Records waiting for `handlers` (metrics, the request log), handed over in slices."""

    def __init__(self, *handlers: Handler, linger: bool = True) -> None:
        self.handlers: list[Handler] = list(handlers)
        self._linger_s = LINGER_S if linger else 0.0
        self._queue: deque[RequestRecord] = deque()
        self._scheduled = False

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, rec: RequestRecord) -> None:
        self._queue.append(rec)
        if not self._scheduled:
            self._scheduled = True
            # The loop is passed on from slice to slice: each look-up costs a getpid()
            # system call on Python 3.11.
            loop = asyncio.get_running_loop()
            loop.call_later(self._linger_s, self._slice, loop)

    def drain(self) -> None:
        """Hand every queued record over now."""
        while self._queue:
            self._handle(self._queue.popleft())

    def _slice(self, loop: asyncio.AbstractEventLoop) -> None:
        queue = self._queue
        started = perf_counter()
        while queue:
            self._handle(queue.popleft())
            if perf_counter() - started >= SLICE_S and len(queue) <= MAX_QUEUED:
                break
        if queue:
            loop.call_soon(self._slice, loop)
        else:
            self._scheduled = False

    def _handle(self, rec: RequestRecord) -> None:
        for handler in self.handlers:
            try:
                handler(rec)
            except Exception:  # a bug in one handler must not stop the bookkeeping
                _log.exception("bookkeeping of request %s failed", rec.request_id)
