"""`_Deadline`, the connect's timeout, keeps `asyncio.timeout`'s rules: each scenario runs
under both and must end the same way (what is raised, the task's cancellation count)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest

from gateway.transports.native import _Deadline
from tests.support.loops import Run
from tests.support.loops import run as run  # the fixture, used by name

pytestmark = pytest.mark.timeout(15)

Scope = Callable[[asyncio.AbstractEventLoop, float | None], Any]


async def _outcome(
    scope: Scope, seconds: float | None, work: float, cancel_after: float | None
) -> tuple[str, int]:
    """What `work` seconds of waiting under `scope(seconds)` ends with (the task cancelled
    from outside after `cancel_after` seconds, if given), and the cancellation count then."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    if cancel_after:
        loop.call_later(cancel_after, task.cancel)
    entry = task.cancelling()
    result = "done"
    try:
        manager = scope(loop, seconds)
        if isinstance(manager, _Deadline):
            with manager:
                await _wait(loop, task, work, cancel_after)
        else:
            async with manager:
                await _wait(loop, task, work, cancel_after)
    except TimeoutError:
        result = "timeout"
    except asyncio.CancelledError:
        result = "cancelled"
    count = task.cancelling() - entry
    while task.cancelling() > entry:  # let the test go on after an outside cancel
        task.uncancel()
    return result, count


async def _wait(
    loop: asyncio.AbstractEventLoop,
    task: asyncio.Task[Any],
    work: float,
    cancel_after: float | None,
) -> None:
    if cancel_after == 0:  # cancelled from outside in the same loop pass as the deadline's
        loop.call_soon(task.cancel)
    await asyncio.sleep(work)


SCENARIOS = [
    (0.01, 1.0, None, "timeout"),  # it expires
    (None, 0.01, None, "done"),  # no deadline
    (1.0, 0.01, None, "done"),  # the work ends first
    (1.0, 1.0, 0.01, "cancelled"),  # cancelled from outside before the deadline
    (0.0, 1.0, 0.0, "cancelled"),  # both at once: the outside cancel wins
    (0.0, 1.0, None, "timeout"),  # already passed
]


@pytest.mark.parametrize(("seconds", "work", "cancel_after", "expected"), SCENARIOS)
def test_a_deadline_ends_as_asyncio_timeout_does(
    run: Run, seconds: float | None, work: float, cancel_after: float | None, expected: str
) -> None:
    async def scenario() -> None:
        standard = await _outcome(lambda loop, s: asyncio.timeout(s), seconds, work, cancel_after)
        ours = await _outcome(_Deadline, seconds, work, cancel_after)
        assert ours == standard
        assert ours[0] == expected

    run(scenario())


def test_a_deadline_leaves_no_timer_behind(run: Run) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        deadline = _Deadline(loop, 0.05)
        with deadline:
            await asyncio.sleep(0)
        assert deadline._timer is None
        await asyncio.sleep(0.1)  # past the deadline: nothing cancels this task now
        with contextlib.suppress(TimeoutError), _Deadline(loop, 0.01):
            await asyncio.sleep(1)
        await asyncio.sleep(0.05)

    run(scenario())
