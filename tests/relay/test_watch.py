"""StreamWatch learning of a client disconnect from the server's `DisconnectHook`.

Under `gateway serve` the hook replaces the task that waits on `receive()` (the end-to-end
disconnect tests in tests/integration go through it); here each of its orders of events is
checked on its own: lost while relaying, lost before the watch started, and after stop().
"""

from __future__ import annotations

import asyncio

from starlette.types import Message

from gateway.asgi import DisconnectHook
from gateway.config import Timeouts
from gateway.relay.watch import StreamWatch


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
