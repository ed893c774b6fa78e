"""Reading a request body: whole, bounded in size, and in time only when it has to wait."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from starlette.types import Message

from gateway.asgi import ClientGone, Waiting, run_until_wait
from gateway.edge.http import read_body
from gateway.errors import PayloadTooLarge

SCOPE = {"type": "http", "headers": []}


def receiver(parts: list[tuple[float, Message]]) -> Callable[[], Awaitable[Message]]:
    """receive() giving each message after its delay (0: at once, without waiting)."""
    queue = list(parts)

    async def receive() -> Message:
        delay, message = queue.pop(0)
        if delay:
            await asyncio.sleep(delay)
        return message

    return receive


def body(data: bytes, more: bool = False) -> Message:
    return {"type": "http.request", "body": data, "more_body": more}


def read(parts: list[tuple[float, Message]], limit: int = 100, stall_s: float = 0.2) -> bytes:
    return asyncio.run(read_body(SCOPE, receiver(parts), limit, stall_s))


def test_a_body_that_came_with_the_headers_is_read_without_waiting() -> None:
    async def scenario() -> None:
        result = run_until_wait(read_body(SCOPE, receiver([(0, body(b"{}"))]), 100, 0.2))
        assert result == b"{}"  # finished in the caller's step: no task switch, no timer

    asyncio.run(scenario())


def test_a_body_in_parts_is_joined_and_a_late_one_is_still_in_time() -> None:
    parts = [(0, body(b"ab", more=True)), (0.05, body(b"cd", more=True)), (0, body(b"e"))]
    assert read(parts) == b"abcde"
    assert read([(0.05, body(b"late"))]) == b"late"


@pytest.mark.parametrize(
    "parts",
    [
        [(1.0, body(b"never"))],  # nothing arrives
        [(0, body(b"{", more=True)), (1.0, body(b"}"))],  # the rest never arrives
    ],
)
def test_a_stalled_body_times_out(parts: list[tuple[float, Message]]) -> None:
    with pytest.raises(TimeoutError):
        read(parts)


def test_too_large_and_a_client_gone_midway() -> None:
    with pytest.raises(PayloadTooLarge):
        read([(0, body(b"x" * 60, more=True)), (0, body(b"y" * 60))])
    with pytest.raises(ClientGone):
        read([(0, body(b"{", more=True)), (0.01, {"type": "http.disconnect"})])


def test_waiting_passes_a_cancellation_into_the_coroutine() -> None:
    cleaned: list[str] = []

    async def slow() -> int:
        try:
            await asyncio.sleep(10)
        finally:
            cleaned.append("finally")
        return 1

    async def scenario() -> None:
        rest = run_until_wait(slow())
        assert isinstance(rest, Waiting)

        async def wait_rest() -> int:
            return await rest

        task = asyncio.ensure_future(wait_rest())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert cleaned == ["finally"]
