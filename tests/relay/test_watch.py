"""StreamWatch learning of a client disconnect from the server's `DisconnectHook`.

Under `gateway serve` the hook replaces the task that waits on `receive()` (the end-to-end
disconnect tests in tests/integration go through it); here each of its orders of events is
checked on its own: lost while relaying, lost before the watch started, and after stop().
"""

from __future__ import annotations

import asyncio
import math
import time

from starlette.types import Message, Send

from gateway.asgi import DisconnectHook
from gateway.config import Timeouts
from gateway.relay.watch import GRAIN, Alarms, StreamWatch, first_check_s


async def _never() -> Message:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def _send(message: Message) -> None:
    pass


async def _watched(hook: DisconnectHook, fire_after: float | None) -> tuple[str | None, bool]:
    """Run a request-like task under a watch with `hook`; fire the hook after `fire_after`
    seconds (None: never). The watch's outcome, and whether the task was cancelled."""
    watch_box: list[StreamWatch] = []

    async def request() -> bool:
        watch = StreamWatch(_send, Timeouts())
        watch_box.append(watch)
        watch.start(_never, hook)
        try:
            await asyncio.sleep(1.0)
            return False
        except asyncio.CancelledError:
            return True
        finally:
            watch.stop()

    task = asyncio.ensure_future(request())
    if fire_after is not None:
        await asyncio.sleep(fire_after)
        hook.fire()
    cancelled = await asyncio.wait_for(task, 2.0)
    return watch_box[0].ended, cancelled


def test_a_lost_connection_ends_the_stream_as_client_cancelled() -> None:
    hook = DisconnectHook()
    ended, cancelled = asyncio.run(_watched(hook, fire_after=0.05))
    assert (ended, cancelled) == ("client_cancelled", True)
    assert hook.callback is None


def test_a_connection_lost_before_the_watch_started() -> None:
    hook = DisconnectHook()
    hook.fire()
    ended, cancelled = asyncio.run(_watched(hook, fire_after=None))
    assert (ended, cancelled) == ("client_cancelled", True)


def test_no_watch_task_waits_on_receive_when_the_server_has_the_hook() -> None:
    async def main() -> int:
        watch = StreamWatch(_send, Timeouts())
        before = len(asyncio.all_tasks())
        watch.start(_never, DisconnectHook())
        during = len(asyncio.all_tasks())
        watch.stop()
        return during - before

    assert asyncio.run(main()) == 0


def test_after_stop_the_hook_ends_nothing() -> None:
    async def main() -> str | None:
        hook = DisconnectHook()
        watch = StreamWatch(_send, Timeouts())
        watch.start(_never, hook)
        watch.stop()
        hook.fire()
        await asyncio.sleep(0.01)
        return watch.ended

    assert asyncio.run(main()) is None


async def _first_token_window(
    timeouts: Timeouts, wait: float, also: str | None = None
) -> tuple[bool | None, int, str | None]:
    """An attempt's first-token window around a `wait`-second wait; `also`: "disconnect"
    (the client leaves just after the deadline passed, before the task ran again) or
    "server" (the server cancels the task halfway to the deadline). Whether the
    cancellation was the first-token timeout (None: no cancellation), the task's pending
    cancellations after, and the watch's outcome."""
    hook = DisconnectHook()
    loop = asyncio.get_running_loop()
    watch_box: list[StreamWatch] = []

    async def request() -> tuple[bool | None, int]:
        watch = StreamWatch(_send, timeouts)
        watch_box.append(watch)
        watch.start(_never, hook, first_check_s(timeouts))
        late: bool | None = None
        try:
            watch.expect_first_token()
            try:
                if also == "disconnect":
                    # The loop is held past both moments: they are handled in their order
                    # before this task runs again.
                    loop.call_later(timeouts.first_token * 1.5, hook.fire)
                    time.sleep(timeouts.first_token * 3)  # noqa: ASYNC251
                await asyncio.sleep(wait)
            except asyncio.CancelledError:
                late = watch.first_token_late()
            finally:
                watch.first_token_seen()
            await asyncio.sleep(2 * timeouts.first_token)  # past a deadline that is closed
        except asyncio.CancelledError:
            pass
        finally:
            watch.stop()
        task = asyncio.current_task()
        assert task is not None
        return late, task.cancelling()

    task = asyncio.ensure_future(request())
    if also == "server":
        await asyncio.sleep(timeouts.first_token / 2)
        task.cancel()
    late, cancelling = await asyncio.wait_for(task, 5.0)
    return late, cancelling, watch_box[0].ended


def test_a_late_first_token_fails_the_attempt_not_the_request() -> None:
    timeouts = Timeouts(first_token=0.05, keepalive=0.02)
    late, cancelling, ended = asyncio.run(_first_token_window(timeouts, wait=1.0))
    # A timeout of the attempt, taken back from the task: the request goes on (a retry).
    assert (late, cancelling, ended) == (True, 0, None)


def test_a_first_token_in_time_closes_the_window() -> None:
    timeouts = Timeouts(first_token=0.05, keepalive=0.02)
    late, cancelling, ended = asyncio.run(_first_token_window(timeouts, wait=0.01))
    assert (late, cancelling, ended) == (None, 0, None)


def test_a_client_that_leaves_as_the_first_token_is_late_ends_the_request() -> None:
    timeouts = Timeouts(first_token=0.05)
    late, cancelling, ended = asyncio.run(
        _first_token_window(timeouts, wait=1.0, also="disconnect")
    )
    # Two cancellations: the timeout's is taken back, the watch's end is the relay's to
    # take (`Relay._stopped`).
    assert (late, cancelling, ended) == (False, 1, "client_cancelled")


def test_the_servers_cancellation_in_the_window_is_not_a_timeout() -> None:
    timeouts = Timeouts(first_token=0.2)
    late, cancelling, ended = asyncio.run(_first_token_window(timeouts, wait=1.0, also="server"))
    assert (late, cancelling, ended) == (False, 1, None)


async def _attempt_under(
    request: Timeouts, attempts: list[Timeouts], wait: float, before: float = 0.01
) -> tuple[bool | None, str | None, float]:
    """A request's watch under `request` timeouts, whose attempts run one after another
    under `attempts` (each a model's or deployment's), each waiting `before` seconds but
    the last, which waits `wait` seconds for its first event. Whether that last attempt was late, the watch's outcome, and when the
    task was cancelled (seconds from the watch's start; 0: never)."""

    async def run() -> tuple[bool | None, str | None, float]:
        watch = StreamWatch(_send, request)
        started = time.perf_counter()
        watch.start(_never, DisconnectHook(), first_check_s(request))
        late: bool | None = None
        cancelled_at = 0.0
        try:
            for i, timeouts in enumerate(attempts):
                watch.expect_first_token(timeouts)
                try:
                    await asyncio.sleep(wait if i == len(attempts) - 1 else before)
                except asyncio.CancelledError:
                    cancelled_at = time.perf_counter() - started
                    late = watch.first_token_late()
                    if not late:
                        raise
                finally:
                    watch.first_token_seen()
        except asyncio.CancelledError:
            pass
        finally:
            watch.stop()
        return late, watch.ended, cancelled_at

    return await asyncio.wait_for(run(), 5.0)


def test_an_attempt_is_timed_by_its_own_first_token_timeout() -> None:
    # The request's (the gateway's) 60 s would let it wait; its model's 0.05 s does not.
    late, ended, at = asyncio.run(
        _attempt_under(Timeouts(), [Timeouts(first_token=0.05)], wait=1.0)
    )
    assert (late, ended) == (True, None)
    assert 0.05 <= at < 0.5


def test_a_fallback_attempt_is_timed_by_its_own_not_the_first_ones() -> None:
    # The first attempt's model is strict (0.05 s); the fallback's waits 0.3 s for a first
    # event that takes 0.15 s.
    late, ended, at = asyncio.run(
        _attempt_under(
            Timeouts(first_token=0.05),
            [Timeouts(first_token=0.05), Timeouts(first_token=0.3)],
            wait=0.15,
        )
    )
    assert (late, ended, at) == (None, None, 0.0)


def test_an_attempts_total_counts_from_the_requests_start() -> None:
    # The gateway's total is 60 s; the second attempt's model has 0.35 s, counted from the
    # watch's start (the first attempt's 0.2 s included): at 0.35 s, not 0.55 s.
    late, ended, at = asyncio.run(
        _attempt_under(
            Timeouts(), [Timeouts(), Timeouts(first_token=30, total=0.35)], wait=1.0, before=0.2
        )
    )
    # Not the attempt's timeout: the request's end (the relay words it as the total timeout).
    assert (late, ended) == (False, "upstream_error")
    assert 0.35 <= at < 0.5, at


def test_a_longer_total_of_the_attempt_lets_it_run_past_the_requests() -> None:
    late, ended, at = asyncio.run(
        _attempt_under(Timeouts(total=0.1), [Timeouts(first_token=30, total=30)], wait=0.3)
    )
    assert (late, ended, at) == (None, None, 0.0)


def test_watches_due_within_a_grain_share_one_loop_timer() -> None:
    """The watches' shared timers (`Alarms`): one loop timer per `GRAIN` of time, its
    watches checked when it fires (never before their moment), cancelled when the last
    one leaves."""

    async def main() -> tuple[int, int, int, list[bool]]:
        alarms = Alarms(asyncio.get_running_loop())
        checked: list[bool] = []
        watches = [_Counted(_send, Timeouts(), alarms) for _ in range(3)]
        # The middle of a grain 50 ms ahead: two in its slot, one in a later slot.
        at = (math.ceil(time.perf_counter() / GRAIN) + 5.5) * GRAIN
        for watch, when in zip(watches, (at, at + GRAIN / 10, at + 3 * GRAIN), strict=True):
            watch._arm(when)
        both = alarms.pending()
        watches[2].stop()  # its slot's only watch: the slot's timer goes
        one = alarms.pending()
        await asyncio.sleep(0.06 + 3 * GRAIN)
        checked = [w.checked_in_time for w in watches]
        return both, one, alarms.pending(), checked

    both, one, after, checked = asyncio.run(main())
    assert (both, one, after) == (2, 1, 0)
    assert checked == [True, True, None]


def test_a_watch_that_left_its_slot_while_it_fired_is_not_checked() -> None:
    async def main() -> list[bool | None]:
        alarms = Alarms(asyncio.get_running_loop())
        first = _Counted(_send, Timeouts(), alarms)
        second = _Counted(_send, Timeouts(), alarms)
        first.stops, second.stops = second, first  # whichever is checked first stops the other
        at = time.perf_counter() + 0.02
        first._arm(at)
        second._arm(at)
        await asyncio.sleep(0.02 + 3 * GRAIN)
        return sorted([first.checked_in_time, second.checked_in_time], key=str)

    assert asyncio.run(main()) == [None, True]


def test_a_check_that_fails_is_reported_and_the_slot_goes_on() -> None:
    async def main() -> tuple[list[bool | None], list[str]]:
        loop = asyncio.get_running_loop()
        reported: list[str] = []
        loop.set_exception_handler(lambda _loop, context: reported.append(context["message"]))
        alarms = Alarms(loop)
        first = _Counted(_send, Timeouts(), alarms)
        second = _Counted(_send, Timeouts(), alarms)
        first.fails = second.fails = True  # each fails after recording: the other still runs
        at = time.perf_counter() + 0.02
        first._arm(at)
        second._arm(at)
        await asyncio.sleep(0.02 + 3 * GRAIN)
        return [first.checked_in_time, second.checked_in_time], reported

    checked, reported = asyncio.run(main())
    assert checked == [True, True]
    assert reported == ["StreamWatch check failed"] * 2


class _Counted(StreamWatch):
    """A watch whose check records whether it ran no earlier than asked (and may stop
    another watch, as a check that ends a request could)."""

    __slots__ = ("checked_in_time", "fails", "stops")

    def __init__(self, send: Send, timeouts: Timeouts, alarms: Alarms) -> None:
        super().__init__(send, timeouts, alarms)
        self.checked_in_time: bool | None = None
        self.stops: StreamWatch | None = None
        self.fails = False

    def _check(self) -> None:
        self.checked_in_time = time.perf_counter() >= self._timer_at
        self._timer = None
        if self.stops is not None:
            self.stops.stop()
        if self.fails:
            raise RuntimeError("a bug in a check")
