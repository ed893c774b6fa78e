"""Push-mode relaying (`gateway.relay.pump`): a send started at once, the rest of a send
that had to wait, and how the request's task learns of each outcome.

The end-to-end stream tests run through the pump under `gateway serve` (native transport);
these pin down the orders of events a loopback run rarely produces: a send that waits,
a cancellation during that wait, an error or a bug arriving from the upstream's callback.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.types import Message

from gateway.config import Timeouts
from gateway.errors import UpstreamError
from gateway.observability.records import INTER_TOKEN_BUCKETS, Gaps
from gateway.relay import pump as pump_module
from gateway.relay.pump import Pump, start_send
from gateway.relay.watch import StreamWatch


class Client:
    """An ASGI send that waits on `gate` while it is closed, as uvicorn's does while the
    client's buffer is full."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.cancelled = False

    async def send(self, message: Message) -> None:
        if not self.gate.is_set():
            try:
                await self.gate.wait()
            except asyncio.CancelledError:
                self.cancelled = True
                raise
        self.sent.append(message["body"])


class Upstream:
    """What the pump asks of a pushed stream: to go on once the sink is ready again."""

    def __init__(self) -> None:
        self.resumed = 0

    def resume_push(self) -> None:
        self.resumed += 1


def body(data: bytes) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": True}


def test_a_send_that_does_not_wait_finishes_inside_start_send() -> None:
    async def main() -> list[bytes]:
        client = Client()
        assert start_send(client.send, body(b"a")) is None
        return client.sent

    assert asyncio.run(main()) == [b"a"]


def test_the_rest_of_a_waiting_send_finishes_when_awaited() -> None:
    async def main() -> list[bytes]:
        client = Client()
        client.gate.clear()
        rest = start_send(client.send, body(b"a"))
        assert rest is not None and client.sent == []
        asyncio.get_running_loop().call_later(0.01, client.gate.set)
        await rest
        return client.sent

    assert asyncio.run(main()) == [b"a"]


def test_cancelling_the_rest_cancels_the_send() -> None:
    async def main() -> Client:
        client = Client()
        client.gate.clear()
        rest = start_send(client.send, body(b"a"))
        assert rest is not None

        async def finish() -> None:
            await rest

        task = asyncio.ensure_future(finish())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return client

    client = asyncio.run(main())
    assert client.cancelled and client.sent == []


async def _pumped(
    events: list[tuple[float, str, bytes | Exception | None]],
) -> tuple[Client, Upstream, Pump, BaseException | None]:
    """Drive a pump from timed callbacks: ("relay", bytes), ("end", error or None),
    ("close"/"open", None) on the client's gate. What was sent, and what run() raised."""
    client, upstream = Client(), Upstream()
    watch = StreamWatch(client.send, Timeouts())
    pump = Pump(client.send, watch, Gaps(), 0.0)
    loop = asyncio.get_running_loop()
    for at, what, arg in events:
        if what == "relay":
            loop.call_later(at, pump.relay, arg)
        elif what == "end":
            loop.call_later(at, pump.end, arg)
        elif what == "close":
            loop.call_later(at, client.gate.clear)
        else:
            loop.call_later(at, client.gate.set)
    raised: BaseException | None = None
    try:
        await asyncio.wait_for(pump.run(upstream), 2.0)  # type: ignore[arg-type]
    except Exception as exc:
        raised = exc
    return client, upstream, pump, raised


def test_reads_are_sent_from_the_callbacks_and_the_end_returns() -> None:
    client, upstream, pump, raised = asyncio.run(
        _pumped([(0.01, "relay", b"a"), (0.02, "relay", b"b"), (0.03, "end", None)])
    )
    assert raised is None and client.sent == [b"a", b"b"]
    assert upstream.resumed == 0  # no send waited: the task never had to step in
    assert len(pump.gaps) == 2


def test_a_send_that_waits_stops_the_pump_until_the_task_finished_it() -> None:
    """Each step waits for the one before it to have happened. (Timed callbacks 30 ms apart
    ran in one loop turn after a busy box's stall: the end came before the task had finished
    the waiting send, and the pump rightly never asked the upstream to go on.)"""

    async def main() -> tuple[Client, Upstream, Pump]:
        client, upstream = Client(), Upstream()
        pump = Pump(client.send, StreamWatch(client.send, Timeouts()), Gaps(), 0.0)
        loop = asyncio.get_running_loop()
        running = asyncio.ensure_future(pump.run(upstream))  # type: ignore[arg-type]
        client.gate.clear()
        loop.call_soon(pump.relay, b"a")  # from a callback, as the upstream's reads come
        for _ in range(3):
            await asyncio.sleep(0)
        assert client.sent == [] and not pump.ready  # the send waits; the pump stopped
        client.gate.set()
        while not upstream.resumed:  # noqa: ASYNC110 (the pump's resume has no event)
            await asyncio.sleep(0)
        assert client.sent == [b"a"]
        loop.call_soon(pump.end, None)
        await asyncio.wait_for(running, 2.0)
        return client, upstream, pump

    client, upstream, pump = asyncio.run(asyncio.wait_for(main(), 5.0))
    assert client.sent == [b"a"]
    assert upstream.resumed == 1  # asked to go on once the send was done
    assert pump.ready is False  # ended


def test_an_upstream_error_is_raised_in_the_task_after_what_came_before() -> None:
    error = UpstreamError("provider 'p' failed mid-stream: boom", kind="error_event")
    client, _, _, raised = asyncio.run(_pumped([(0.01, "relay", b"a"), (0.02, "end", error)]))
    assert raised is error and client.sent == [b"a"]


def test_a_bug_in_the_callback_path_is_raised_not_swallowed() -> None:
    bug = KeyError("translate")
    _, _, _, raised = asyncio.run(_pumped([(0.01, "end", bug)]))
    assert raised is bug


class Writer:
    """A server's BodyWriter: writes while `open`, else declines (the pump sends instead)."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.open = True

    def write(self, data: bytes) -> bool:
        if self.open:
            self.written.append(data)
        return self.open


def test_reads_go_to_the_servers_writer_and_to_send_when_it_declines() -> None:
    async def main() -> tuple[Client, Writer, BaseException | None]:
        client, upstream, writer = Client(), Upstream(), Writer()
        pump = Pump(client.send, StreamWatch(client.send, Timeouts()), Gaps(), 0.0, writer)
        loop = asyncio.get_running_loop()
        loop.call_later(0.01, pump.relay, b"a")
        loop.call_later(0.02, setattr, writer, "open", False)
        loop.call_later(0.03, pump.relay, b"b")  # declined: the ASGI send carries it
        loop.call_later(0.04, setattr, writer, "open", True)
        loop.call_later(0.05, pump.relay, b"c")
        loop.call_later(0.06, pump.end, None)
        raised: BaseException | None = None
        try:
            await asyncio.wait_for(pump.run(upstream), 2.0)  # type: ignore[arg-type]
        except Exception as exc:
            raised = exc
        return client, writer, raised

    client, writer, raised = asyncio.run(main())
    assert raised is None
    assert writer.written == [b"a", b"c"]
    assert client.sent == [b"b"]


def test_relayed_reads_count_their_gaps_as_gaps_append_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`Pump.relay` counts each read's gap, from the previous read's time to this one's, in
    the same buckets and sum, bounds included, as `Gaps` of those gaps."""
    gaps = [0.0, 0.0004, *INTER_TOKEN_BUCKETS, 0.0200001, 0.3, 7.5, 11.0, 1e9]

    async def main() -> Gaps:
        client = Client()
        pump = Pump(client.send, StreamWatch(client.send, Timeouts()), Gaps(), 0.0, Writer())
        for gap in gaps:
            pump.last = 0.0  # so that the gap is `now` exactly
            monkeypatch.setattr(pump_module, "perf_counter", lambda gap=gap: gap)
            pump.relay(b"x")
        return pump.gaps

    counted = asyncio.run(main())
    expected = Gaps(gaps)
    assert counted.counts == expected.counts
    assert counted.total == expected.total
