"""Finished requests' bookkeeping: every record reaches every handler, in order, a bounded
slice of work per event-loop turn, all of it at once on `drain()`."""

from __future__ import annotations

import asyncio
import logging
from time import perf_counter

import pytest

from gateway.observability import finished
from gateway.observability.finished import Finished
from gateway.observability.records import RequestRecord
from tests.observability.obs_support import make_record


@pytest.fixture(autouse=True)
def no_linger(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(finished, "LINGER_S", 0.0)


def costly(seconds: float, seen: list[str]) -> finished.Handler:
    def handle(rec: RequestRecord) -> None:
        until = perf_counter() + seconds
        while perf_counter() < until:
            pass
        seen.append(rec.request_id)

    return handle


async def per_turn(done: asyncio.Future[None], seen: list[str], counts: list[int]) -> None:
    """How many records were handled in each loop turn, until `done`."""
    while not done.done():
        before = len(seen)
        await asyncio.sleep(0)
        counts.append(len(seen) - before)


async def emptied(queue: Finished) -> None:
    for _ in range(10_000):
        if not len(queue):
            return
        await asyncio.sleep(0)
    raise AssertionError("the queue was never worked down")


def records(n: int) -> list[RequestRecord]:
    return [make_record(request_id=f"r{i}") for i in range(n)]


def test_records_are_handed_over_in_order_a_slice_per_loop_turn() -> None:
    seen: list[str] = []
    other: list[str] = []
    counts: list[int] = []

    async def scenario() -> None:
        queue = Finished(costly(0.0002, seen), lambda rec: other.append(rec.request_id))
        done = asyncio.get_running_loop().create_future()
        watcher = asyncio.ensure_future(per_turn(done, seen, counts))
        for rec in records(30):
            queue.add(rec)
        await emptied(queue)
        done.set_result(None)
        await watcher

    asyncio.run(scenario())
    expected = [f"r{i}" for i in range(30)]
    assert seen == other == expected
    # 0.2 ms each against a 0.5 ms slice: three a turn, so other work ran in between.
    assert max(counts) <= 3
    assert sum(1 for c in counts if c) >= 10


def test_drain_hands_everything_over_at_once() -> None:
    seen: list[str] = []

    async def scenario() -> None:
        queue = Finished(lambda rec: seen.append(rec.request_id))
        for rec in records(50):
            queue.add(rec)
        queue.drain()
        assert len(queue) == 0
        assert len(seen) == 50
        await asyncio.sleep(0)  # the slice already scheduled finds nothing left
        assert len(seen) == 50

    asyncio.run(scenario())


def test_a_long_queue_is_worked_down_to_its_bound_in_one_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(finished, "MAX_QUEUED", 20)
    seen: list[str] = []

    async def scenario() -> None:
        queue = Finished(costly(0.0002, seen))
        for rec in records(50):
            queue.add(rec)
        for _ in range(100):  # until the first slice ran: it works until 20 are left
            await asyncio.sleep(0)
            if seen:
                break
        assert len(seen) == 30 and len(queue) == 20
        queue.drain()

    asyncio.run(scenario())


def test_a_failing_handler_is_logged_and_the_others_carry_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[str] = []

    def broken(rec: RequestRecord) -> None:
        if rec.request_id == "r1":
            raise RuntimeError("a bug")

    async def scenario() -> None:
        queue = Finished(broken, lambda rec: seen.append(rec.request_id))
        for rec in records(3):
            queue.add(rec)
        await emptied(queue)
        queue.add(make_record(request_id="later"))
        await asyncio.sleep(0)

    with caplog.at_level(logging.ERROR, logger="gateway.observability.finished"):
        asyncio.run(scenario())
    assert seen == ["r0", "r1", "r2", "later"]
    assert "bookkeeping of request r1 failed" in caplog.text


def test_the_first_slice_lingers_for_company(monkeypatch: pytest.MonkeyPatch) -> None:
    """The second record comes a few loop turns after the first: both are handled in one
    slice, no sooner than the linger after the first. (The linger is long beside those
    turns: a 20 ms sleep inside a 50 ms linger let a busy box's stall end it first.)"""
    linger = 0.3
    monkeypatch.setattr(finished, "LINGER_S", linger)
    seen: list[str] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        handled: asyncio.Future[float] = loop.create_future()

        def handle(rec: RequestRecord) -> None:
            seen.append(rec.request_id)
            if not handled.done():
                handled.set_result(loop.time())

        queue = Finished(handle)
        started = loop.time()
        queue.add(make_record(request_id="first"))
        for _ in range(3):  # the loop comes round: the first record waits for company
            await asyncio.sleep(0)
        assert seen == []
        queue.add(make_record(request_id="second"))
        first_handled = await asyncio.wait_for(handled, 5)
        assert seen == ["first", "second"]  # by the time the first was, in the same slice
        assert first_handled - started >= linger - 0.001

    asyncio.run(scenario())


def test_without_linger_a_record_is_handled_in_the_next_loop_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(finished, "LINGER_S", 0.05)
    seen: list[str] = []

    async def scenario() -> None:
        queue = Finished(lambda rec: seen.append(rec.request_id), linger=False)
        queue.add(make_record(request_id="only"))
        assert seen == []
        for _ in range(3):  # call_later(0) runs within a turn or two
            await asyncio.sleep(0)
        assert seen == ["only"]

    asyncio.run(scenario())
