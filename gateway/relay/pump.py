"""Push-mode relaying: each upstream read goes to the client from the upstream
connection's own callback, with no task wakeup in between.

Pulling a stream costs one task wakeup per upstream read (a future resolved, the task
stepped through four coroutine frames, then the ASGI `send` coroutine). A `Pump` is the
`Sink` a pushed stream delivers to (`EventStream.push`): it writes each read with the
server's `BodyWriter` when there is one (`gateway serve`), else starts the ASGI `send` at once
(`start_send`); in the usual case that the server writes without waiting, that is the whole
of it. The request's task sleeps in `run()` until something needs it:

- a send had to wait (the client's buffer is full): the pump stops taking reads, which
  holds the upstream back as pulling does; the task finishes that send, then asks the stream
  to go on (`resume_push`);
- the stream ended or failed: `run()` returns or raises the stream's error, exactly where
  the pull loop would have.

The watch keeps working: reads stamp `last_read`, and a waiting send sets `sending_since`;
its cancellation reaches the task in `run()`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine
from time import perf_counter
from typing import Any, cast

from starlette.types import Send

from gateway.asgi import BodyWriter, Waiting, run_until_wait
from gateway.observability.records import Gaps
from gateway.providers.base import EventStream
from gateway.relay.watch import StreamWatch


class Pump:
    __slots__ = (
        "_error",
        "_loop",
        "_send",
        "_waiter",
        "_watch",
        "_writer",
        "ended",
        "gaps",
        "last",
        "pending",
        "ready",
        "tail",
    )

    def __init__(
        self,
        send: Send,
        watch: StreamWatch,
        gaps: Gaps,
        last: float,
        writer: BodyWriter | None = None,
    ) -> None:
        self._send = send
        self._writer = writer
        self._watch = watch
        self._loop = watch.loop  # not `asyncio.get_running_loop()`: a getpid() call each
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self.gaps = gaps
        self.last = last
        """perf_counter() of the last relayed read (for the inter-token gaps)."""
        self.ready = True
        self.ended = False
        self.pending: Awaitable[None] | None = None
        """The rest of a send that had to wait; the task awaits it."""
        self.tail = b""
        """The read that ended the stream, not written: the relay sends it with the end of
        the response, in one write (`Sink.end`'s `last`)."""

    # --- Sink: called from the upstream connection's callbacks ----------------------------------

    def relay(self, data: bytes) -> None:
        now = perf_counter()
        self.gaps.append(now - self.last)
        self.last = self._watch.last_read = now
        writer = self._writer
        if writer is not None and writer.write(data):
            return  # the usual case under `gateway serve`: written, nothing to wait for
        try:
            rest = start_send(
                self._send, {"type": "http.response.body", "body": data, "more_body": True}
            )
        except BaseException as exc:  # the task re-raises it, as `await send` would have
            self.end(exc)
            return
        if rest is not None:
            self.pending = rest
            self.ready = False
            self._watch.sending_since = now
            self._wake()

    def end(self, error: BaseException | None, last: bytes = b"") -> None:
        if self.ended:
            return  # the first end stands (a failed send, then the stream's own end)
        if last:  # taken as relayed now: the gap and the watch's clock as `relay` stamps them
            now = perf_counter()
            self.gaps.append(now - self.last)
            self.last = self._watch.last_read = now
            self.tail = last
        self.ended = True
        self._error = error
        self.ready = False
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- the request's task ---------------------------------------------------------------

    async def run(self, stream: EventStream) -> None:
        """Until the stream ended; raises its error, or what a send raised."""
        while True:
            if self.pending is not None:
                pending, self.pending = self.pending, None
                await pending
                self._watch.sending_since = 0.0
                if not self.ended:
                    self.ready = True
                    stream.resume_push()
                continue
            if self.ended:
                if self._error is not None:
                    raise self._error
                return
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


def start_send(send: Send, message: dict[str, Any]) -> Awaitable[None] | None:
    """Run `send(message)` up to its first wait: None if it finished (the usual case: the
    server wrote without waiting), else an awaitable for the rest."""
    rest = run_until_wait(cast("Coroutine[Any, Any, None]", send(message)))
    return rest if isinstance(rest, Waiting) else None
