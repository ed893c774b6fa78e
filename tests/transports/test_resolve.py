"""Host names of new upstream connections (gateway.transports.resolve): one lookup for a
burst, kept `ttl` seconds, failures not kept, addresses never looked up, and each address
tried in turn."""

from __future__ import annotations

import asyncio
import gc
import socket
from typing import Any

import httpx
import pytest

from gateway.egress import EgressProxies
from gateway.transports.native import NativeTransport
from gateway.transports.resolve import Resolver
from tests.support.loops import Run
from tests.support.loops import run as run  # the fixture, used by name
from tests.transports.test_native import OK, Upstream, answering, fetch

pytestmark = pytest.mark.timeout(15)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fake_getaddrinfo(
    loop: asyncio.AbstractEventLoop, answers: list[Any], asked: list[str], delay: float = 0.01
) -> None:
    """`loop.getaddrinfo` answering from `answers` in turn (an exception is raised)."""

    async def getaddrinfo(host: str, port: int, **kw: Any) -> list[Any]:
        asked.append(host)
        await asyncio.sleep(delay)
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answer]

    loop.getaddrinfo = getaddrinfo  # type: ignore[method-assign]


def test_a_burst_of_connections_to_a_name_makes_one_lookup(run: Run) -> None:
    """50 new connections at once to `localhost` (both of its addresses tried in turn where
    it has ::1 first and the fake listens on 127.0.0.1 only): one lookup, every answer."""

    async def scenario() -> None:
        async with Upstream(answering(OK)) as up:
            transport = NativeTransport()
            url = f"http://localhost:{up.port}/v1/x"
            answers = await asyncio.gather(*(fetch(transport, url) for _ in range(50)))
            assert answers == [(200, b"hello")] * 50
            assert transport._resolver.lookups == 1
            assert up.accepted == 50
            await transport.aclose()

    run(scenario())


def test_a_burst_through_a_named_egress_proxy_makes_one_lookup(run: Run) -> None:
    """50 new connections at once to an http origin through a proxy named `localhost`: the
    proxy's name is looked up once (the origin's never: the proxy reaches it), and every
    request reaches the proxy in absolute form."""

    async def scenario() -> None:
        seen: list[bytes] = []
        async with Upstream(answering(OK, seen)) as proxy:
            egress = EgressProxies.from_env({"HTTP_PROXY": f"http://localhost:{proxy.port}"})
            transport = NativeTransport(proxies=egress)
            url = "http://api.example.invalid/v1/x"
            answers = await asyncio.gather(*(fetch(transport, url) for _ in range(50)))
            assert answers == [(200, b"hello")] * 50
            assert transport._resolver.lookups == 1
            assert proxy.accepted == 50
            assert len(seen) == 50
            assert all(r.startswith(b"POST http://api.example.invalid/v1/x HTTP/1.1") for r in seen)
            await transport.aclose()

    run(scenario())


def test_an_address_is_never_looked_up(run: Run) -> None:
    async def scenario() -> None:
        async with Upstream(answering(OK)) as up:
            transport = NativeTransport()
            assert await fetch(transport, f"http://127.0.0.1:{up.port}/") == (200, b"hello")
            assert transport._resolver.lookups == 0
            await transport.aclose()

    run(scenario())


def test_an_answer_is_kept_ttl_seconds() -> None:
    async def scenario() -> list[str]:
        loop = asyncio.get_running_loop()
        asked: list[str] = []
        fake_getaddrinfo(loop, [["10.0.0.1"], ["10.0.0.2"]], asked)
        clock = Clock()
        resolver = Resolver(ttl=10.0, clock=clock)
        assert await resolver.addresses(loop, "api.example", 443) == [("10.0.0.1", 443)]
        clock.now += 9.9
        assert await resolver.addresses(loop, "api.example", 443) == [("10.0.0.1", 443)]
        clock.now += 0.2
        assert await resolver.addresses(loop, "api.example", 443) == [("10.0.0.2", 443)]
        return asked

    assert asyncio.run(scenario()) == ["api.example", "api.example"]


def test_a_failed_lookup_fails_its_waiters_and_is_not_kept() -> None:
    async def scenario() -> list[str]:
        loop = asyncio.get_running_loop()
        asked: list[str] = []
        fake_getaddrinfo(loop, [socket.gaierror(socket.EAI_NONAME, "no"), ["10.0.0.3"]], asked)
        resolver = Resolver()
        results = await asyncio.gather(
            *(resolver.addresses(loop, "down.example", 80) for _ in range(5)),
            return_exceptions=True,
        )
        assert all(isinstance(r, socket.gaierror) for r in results), results
        assert await resolver.addresses(loop, "down.example", 80) == [("10.0.0.3", 80)]
        return asked

    assert asyncio.run(scenario()) == ["down.example", "down.example"]


def test_a_cancelled_caller_leaves_the_lookup_to_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        asked: list[str] = []
        fake_getaddrinfo(loop, [["10.0.0.4"], socket.gaierror(socket.EAI_AGAIN, "x")], asked)
        resolver = Resolver()
        first = loop.create_task(resolver.addresses(loop, "api.example", 443))
        second = loop.create_task(resolver.addresses(loop, "api.example", 443))
        await asyncio.sleep(0)
        first.cancel()
        assert await second == [("10.0.0.4", 443)]
        with pytest.raises(asyncio.CancelledError):
            await first
        assert asked == ["api.example"]
        # A lookup whose every caller was cancelled still ends, its error retrieved.
        resolver._known.clear()  # the answer expired
        lone = loop.create_task(resolver.addresses(loop, "api.example", 443))
        await asyncio.sleep(0)
        lone.cancel()
        await asyncio.sleep(0.05)
        assert asked == ["api.example", "api.example"]

    asyncio.run(scenario())
    gc.collect()  # asyncio reports an unretrieved error when the task is freed
    assert "never retrieved" not in caplog.text


def test_the_addresses_of_a_name_are_tried_in_order(run: Run) -> None:
    """The first address refuses (nothing listens there); the second answers."""

    async def scenario() -> None:
        async with Upstream(answering(OK)) as up:
            closed = socket.socket()
            closed.bind(("127.0.0.2", 0))  # bound, never listening: a connect is refused
            refused = closed.getsockname()[1]
            transport = NativeTransport()
            resolver = transport._resolver
            resolver._known[("two.example", up.port)] = (
                float("inf"),
                [("127.0.0.2", refused), ("127.0.0.1", up.port)],
            )
            try:
                answer = await fetch(transport, f"http://two.example:{up.port}/")
            finally:
                closed.close()
            assert answer == (200, b"hello")
            assert resolver.lookups == 0
            await transport.aclose()

    run(scenario())


def test_addresses_at_hand_without_waiting() -> None:
    """`at_hand`: an address itself, a name's answer while it is kept, else None (a lookup
    is needed: `to_try` makes it)."""
    clock = Clock()
    resolver = Resolver(ttl=10.0, clock=clock)
    assert resolver.at_hand("127.0.0.1", 80) == [("127.0.0.1", 80)]
    assert resolver.at_hand("::1", 443) == [("::1", 443)]
    assert resolver.at_hand("api.example", 443) is None
    resolver._known[("api.example", 443)] = (clock.now + 10.0, [("10.0.0.5", 443)])
    assert resolver.at_hand("api.example", 443) == [("10.0.0.5", 443)]
    assert resolver.at_hand("api.example", 80) is None  # kept per port
    clock.now += 10.0
    assert resolver.at_hand("api.example", 443) is None  # expired
    assert resolver.lookups == 0


def test_a_names_one_address_refusing_fails_with_its_error(run: Run) -> None:
    """A name with one address is connected to without `connect_first`'s loop over the
    addresses: its refusal is still the connection's error."""

    async def scenario() -> None:
        closed = socket.socket()
        closed.bind(("127.0.0.2", 0))  # bound, never listening: a connect is refused
        refused = closed.getsockname()[1]
        transport = NativeTransport()
        transport._resolver._known[("one.example", refused)] = (
            float("inf"),
            [("127.0.0.2", refused)],
        )
        try:
            with pytest.raises(httpx.ConnectError, match=r"cannot connect to one\.example"):
                await fetch(transport, f"http://one.example:{refused}/")
        finally:
            closed.close()
        assert transport._resolver.lookups == 0
        await transport.aclose()

    run(scenario())
