"""Reading a request body: whole, bounded in size, and in time only when it has to wait;
request ids."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
from collections.abc import Awaitable, Callable

import pytest
from starlette.types import Message

from gateway.asgi import BODY_READER, ClientGone, Waiting, run_until_wait
from gateway.edge.http import new_request_id, read_body, request_id, start_body
from gateway.errors import InvalidRequest, PayloadTooLarge

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


def test_a_body_in_one_part_is_checked_as_one_in_parts_is() -> None:
    with pytest.raises(PayloadTooLarge):
        read([(0, body(b"x" * 101))])
    assert read([(0, body(b"x" * 100))]) == b"x" * 100
    assert read([(0, {"type": "http.request"})]) == b""  # no body at all
    with pytest.raises(ClientGone):
        read([(0, {"type": "http.disconnect"})])


def test_a_new_request_id_is_32_hex_digits_and_never_repeats() -> None:
    ids = [request_id(SCOPE) for _ in range(10_000)]
    assert all(re.fullmatch(rb"[0-9a-f]{32}", rid) for rid in ids)
    assert len(set(ids)) == len(ids)
    # a safe id of the client's is kept; an unsafe one replaced by a new one
    given = {"type": "http", "headers": [(b"x-request-id", b"abc-1.2:3_4")]}
    assert request_id(given) == b"abc-1.2:3_4"
    unsafe = {"type": "http", "headers": [(b"x-request-id", b"a b\r\nx-evil: 1")]}
    assert re.fullmatch(rb"[0-9a-f]{32}", request_id(unsafe))


def test_a_forked_child_makes_ids_of_its_own() -> None:
    """Ids are drawn from random bytes a batch at a time: a child forked after its parent
    drew a batch must not hand out the rest of that batch (the parent will)."""
    parent = new_request_id()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id to the parent, then out without pytest's exit
        os.write(write_end, new_request_id())
        os._exit(0)
    os.close(write_end)
    child = os.read(read_end, 64)
    os.close(read_end)
    os.waitpid(pid, 0)
    mine = new_request_id()
    assert re.fullmatch(rb"[0-9a-f]{32}", child) and child not in (parent, mine)


def test_new_request_ids_are_not_a_count() -> None:
    """Echoed to every client, ids must not tell how many requests went between two: no
    two successive ids share their first half (a prefix-and-counter scheme would)."""
    ids = [new_request_id() for _ in range(1_000)]  # several batches
    assert len(set(ids)) == len(ids)
    assert sum(a[:16] == b[:16] for a, b in itertools.pairwise(ids)) == 0


class Reader:
    def __init__(self, body: bytes | None) -> None:
        self.body = body

    def body_now(self) -> bytes | None:
        body, self.body = self.body, None
        return body


def test_a_body_the_server_hands_over_whole_is_read_without_receive() -> None:
    def never() -> Awaitable[Message]:
        raise AssertionError("receive() called")

    scope = {**SCOPE, "extensions": {BODY_READER: Reader(b"{}")}}
    assert start_body(scope, never, 100, 0.2) == b"{}"
    with pytest.raises(PayloadTooLarge):
        start_body({**SCOPE, "extensions": {BODY_READER: Reader(b"x" * 101)}}, never, 100, 0.2)
    # the reader has none to give: receive() as before
    scope = {**SCOPE, "extensions": {BODY_READER: Reader(None)}}
    assert asyncio.run(read_body(scope, receiver([(0, body(b"ab"))]), 100, 0.2)) == b"ab"


@pytest.mark.parametrize("reader", [None, Reader(None)])
def test_a_declared_length_is_refused_before_the_body_arrives(reader: Reader | None) -> None:
    """While the body is still on its way (no server reader, or one with no whole body
    yet), a `content-length` over the limit, or not a number, is refused at once."""

    def never() -> Awaitable[Message]:
        raise AssertionError("receive() called")

    extensions = {} if reader is None else {"extensions": {BODY_READER: reader}}
    too_long = {**SCOPE, "headers": [(b"content-length", b"101")], **extensions}
    with pytest.raises(PayloadTooLarge):
        start_body(too_long, never, 100, 0.2)
    not_a_number = {**SCOPE, "headers": [(b"content-length", b"ten")], **extensions}
    with pytest.raises(InvalidRequest, match="content-length is not a number"):
        start_body(not_a_number, never, 100, 0.2)
