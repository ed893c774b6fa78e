"""StartBudget: how many requests start per event-loop turn, and in what order.

Turns are counted by a callback that re-schedules itself with `call_soon`, so it runs once
per turn of the loop, as the budget's own bookkeeping does.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from gateway.edge.budget import StartBudget


async def _starts(budget: StartBudget, arrivals: int) -> list[tuple[int, int]]:
    """`arrivals` requests arrive in the same turn; (turn, arrival index) of each start."""
    loop = asyncio.get_running_loop()
    turn = 0

    def tick() -> None:
        nonlocal turn
        turn += 1
        loop.call_soon(tick)

    loop.call_soon(tick)
    started: list[tuple[int, int]] = []

    async def request(i: int) -> None:
        await budget.take()
        started.append((turn, i))

    await asyncio.gather(*(request(i) for i in range(arrivals)))
    return started


def test_a_burst_starts_a_few_per_turn_in_arrival_order() -> None:
    started = asyncio.run(_starts(StartBudget(4), 20))
    assert [i for _, i in started] == list(range(20))  # FIFO
    per_turn = Counter(t for t, _ in started)
    assert max(per_turn.values()) <= 4
    assert len(per_turn) >= 5  # 20 starts needed at least 5 turns


def test_without_contention_nothing_waits() -> None:
    async def main() -> int:
        budget = StartBudget(4)
        for _ in range(4):
            await budget.take()  # returns without suspending: same turn, no queue
        return budget.waiting

    assert asyncio.run(main()) == 0


def test_a_cancelled_waiter_gives_its_place_to_the_next() -> None:
    async def main() -> list[int]:
        budget = StartBudget(1)
        order: list[int] = []

        async def request(i: int) -> None:
            await budget.take()
            order.append(i)

        tasks = [asyncio.ensure_future(request(i)) for i in range(4)]
        await asyncio.sleep(0)  # all four have arrived; 0 started, 1-3 queued
        tasks[1].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return order

    assert asyncio.run(main()) == [0, 2, 3]


def test_at_least_one_per_turn() -> None:
    with pytest.raises(ValueError):
        StartBudget(0)


def test_take_now_takes_this_turns_room_and_the_next_turn_has_room_again() -> None:
    async def main() -> tuple[list[bool], bool]:
        budget = StartBudget(2)
        now = [budget.take_now() for _ in range(3)]  # the endpoint's way: take() on False
        await asyncio.sleep(0)  # the loop comes round: the count starts over
        return now, budget.take_now()

    assert asyncio.run(main()) == ([True, True, False], True)


def test_a_burst_asks_for_the_running_loop_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The turns and the waiters use the loop the first turn was scheduled on: on 3.11
    each `get_running_loop()` is a getpid() system call, and a burst has thousands of
    waiters."""
    calls = Counter[str]()
    real = asyncio.get_running_loop

    def counted() -> asyncio.AbstractEventLoop:
        calls["get_running_loop"] += 1
        return real()

    monkeypatch.setattr("gateway.edge.budget.asyncio.get_running_loop", counted)
    started = asyncio.run(_starts(StartBudget(4), 200))
    assert len(started) == 200
    assert calls["get_running_loop"] == 2  # _starts' own and the budget's first turn
    # the budget still works on a later loop once its turns have stopped
    assert len(asyncio.run(_starts(StartBudget(4), 8))) == 8


def test_a_budget_made_for_its_loop_never_asks_for_the_running_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The gateway's runtime lives on one loop and makes its budget for it: on a lightly
    loaded gateway each request starts a run of turns of its own, and asking for the loop
    then would be a getpid() per request."""
    calls = Counter[str]()
    real = asyncio.get_running_loop

    def counted() -> asyncio.AbstractEventLoop:
        calls["get_running_loop"] += 1
        return real()

    async def main() -> tuple[list[bool], bool, list[tuple[int, int]]]:
        budget = StartBudget(2, real())
        monkeypatch.setattr("gateway.edge.budget.asyncio.get_running_loop", counted)
        now = [budget.take_now() for _ in range(3)]
        await asyncio.sleep(0)  # the loop comes round: the count starts over
        again = budget.take_now()
        await asyncio.sleep(0)
        started = await _starts(budget, 20)
        return now, again, started

    now, again, started = asyncio.run(main())
    assert (now, again) == ([True, True, False], True)
    assert [i for _, i in started] == list(range(20))
    assert max(Counter(t for t, _ in started).values()) <= 2
    assert calls["get_running_loop"] == 1  # _starts' own
