"""The limiter's own Redis client (`gateway.limits.resp`) against a real redis-server:
replies matched to their callers under pipelining, one write per event-loop turn, failures
that fail every call in flight and heal on the next call, scripts after a SCRIPT FLUSH,
passwords, databases and Unix sockets."""

from __future__ import annotations

import asyncio
import socket
import ssl
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.limits import resp
from gateway.limits.resp import Address, RespClient, Script, pack, parse
from tests.support.loops import Run, self_signed
from tests.support.loops import run as run  # the fixture, used by name
from tests.support.redis_server import RedisServer, free_port

pytestmark = pytest.mark.redis


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many commands each write to Redis carried."""
    counts: list[int] = []
    flush = resp._Connection.flush

    def counting(self: resp._Connection) -> None:
        counts.append(len(self._out))
        flush(self)

    monkeypatch.setattr(resp._Connection, "flush", counting)
    return counts


def test_concurrent_calls_get_their_own_replies_in_one_write(
    run: Run, redis_url: str, writes: list[int]
) -> None:
    async def scenario() -> None:
        client = RespClient(redis_url)
        try:
            await client.call("PING")
            writes.clear()
            # Each caller's reply names its caller: a mix-up would show.
            replies = await asyncio.gather(
                *(client.call("ECHO", f"caller-{i}") for i in range(300))
            )
            assert replies == [f"caller-{i}".encode() for i in range(300)]
            # The first call found the connection idle and went at once; the other 299,
            # made while it was in flight, left together at the end of the turn.
            assert writes == [1, 299]
            writes.clear()
            assert await client.call("PING") == "PONG"
            assert writes == [1]  # idle again: written at once
            counters = await asyncio.gather(*(client.call("INCR", "n") for _ in range(50)))
            assert counters == list(range(1, 51))
        finally:
            await client.aclose()

    run(scenario())


async def until(check: Callable[[], bool]) -> None:
    """Until `check()` holds, giving the loop turns (the scenario's guard bounds the wait)."""
    while not check():  # noqa: ASYNC110 (the client's writes have no event to wait on)
        await asyncio.sleep(0.001)


def test_delayed_calls_wait_to_share_a_write_and_an_undelayed_call_takes_them_along(
    run: Run, redis_url: str, writes: list[int]
) -> None:
    """ "In flight" is a BLPOP on a list that stays empty until the test pushes to it, not
    one that times out by itself: on a busy box a 50 ms BLPOP could end before the calls
    meant to be queued behind it were made (they then left at once, on an idle connection)."""

    async def scenario() -> None:
        client = RespClient(redis_url, timeout=4)  # the blocked BLPOP is not a lost reply
        pusher = redis.Redis.from_url(redis_url)  # its writes are not the client's
        blocked = ("BLPOP", "gate", "0")
        released = [b"gate", b"go"]

        def release() -> None:
            pusher.rpush("gate", "go")

        try:
            await client.call("DEL", "n", "gate")
            # On an idle connection a delayed call leaves at once, like any other.
            writes.clear()
            assert await client.call("INCR", "n", delay=10) == 1
            assert writes == [1]
            # A delayed call queued while another was in flight leaves with the next call
            # made once nothing is in flight, at once and in call order.
            writes.clear()
            busy = asyncio.ensure_future(client.call(*blocked))
            await until(lambda: writes == [1])
            waiting = [asyncio.ensure_future(client.call("INCR", "n", delay=10)) for _ in range(2)]
            await asyncio.sleep(0.01)
            release()
            assert await busy == released
            assert not any(w.done() for w in waiting)
            assert await client.call("PING") == "PONG"
            assert writes == [1, 3]
            assert [w.result() for w in waiting] == [2, 3]
            # While a call is in flight, delayed calls wait (up to their delay) and then
            # leave in one write.
            writes.clear()
            busy = asyncio.ensure_future(client.call(*blocked))
            await until(lambda: writes == [1])
            started = time.perf_counter()
            delayed = asyncio.gather(*(client.call("INCR", "n", delay=0.1) for _ in range(3)))
            await until(lambda: writes == [1, 3])
            assert time.perf_counter() - started >= 0.095  # uvloop's timers are in whole ms
            release()
            assert await busy == released
            assert await delayed == [4, 5, 6]
            # An undelayed call does not wait for them: all leave at once, in call order.
            writes.clear()
            busy = asyncio.ensure_future(client.call(*blocked))
            await until(lambda: writes == [1])
            waiting = [asyncio.ensure_future(client.call("INCR", "n", delay=10)) for _ in range(2)]
            await asyncio.sleep(0.01)
            assert not any(w.done() for w in waiting)
            got = asyncio.ensure_future(client.call("GET", "n"))
            await until(lambda: writes == [1, 3])
            release()
            assert await busy == released
            assert await got == b"8"
            assert [w.result() for w in waiting] == [7, 8]
        finally:
            await client.aclose()
            pusher.close()

    run(scenario())


def test_reply_types_and_a_command_error_that_leaves_the_connection_usable(
    run: Run,
    redis_url: str,
) -> None:
    async def scenario() -> None:
        client = RespClient(redis_url)
        try:
            assert await client.call("SET", "k", b"\x00binary\r\nvalue") == "OK"
            assert await client.call("GET", "k") == b"\x00binary\r\nvalue"
            assert await client.call("GET", "missing") is None
            assert await client.call("RPUSH", "l", 1, 2.5, "three") == 3
            assert await client.call("LRANGE", "l", 0, -1) == [b"1", b"2.5", b"three"]
            with pytest.raises(ResponseError, match="WRONGTYPE"):
                await client.call("INCR", "l")
            assert await client.call("PING") == "PONG"
        finally:
            await client.aclose()

    run(scenario())


def test_partial_replies_are_reassembled_byte_by_byte(run: Run) -> None:
    wire = b"*3\r\n:42\r\n$5\r\nhe\r\no\r\n*2\r\n$-1\r\n+OK\r\n-ERR bad\r\n"
    for cut in range(len(wire) - len(b"-ERR bad\r\n")):
        with pytest.raises(resp._Incomplete):
            parse(wire[:cut], 0)
    value, pos = parse(wire, 0)
    assert value == [42, b"he\r\no", [None, "OK"]]
    error, end = parse(wire, pos)
    assert isinstance(error, ResponseError) and str(error) == "ERR bad"
    assert end == len(wire)

    async def scenario() -> None:
        conn = resp._Connection(asyncio.get_running_loop(), timeout=5)
        first, second = conn.call(pack(["A"])), conn.call(pack(["B"]))
        for byte in wire:
            conn.data_received(bytes([byte]))
        assert first.result() == [42, b"he\r\no", [None, "OK"]]
        with pytest.raises(ResponseError, match="ERR bad"):
            second.result()
        # Two reads cut anywhere (whole replies are parsed from the read itself, a cut-off
        # one waits in the buffer), and one read holding both.
        for cut in range(1, len(wire) + 1):
            first, second = conn.call(pack(["A"])), conn.call(pack(["B"]))
            conn.data_received(wire[:cut])
            if cut < len(wire):
                conn.data_received(wire[cut:])
            assert first.result() == [42, b"he\r\no", [None, "OK"]]
            assert isinstance(second.exception(), ResponseError)
            assert not conn._buf and not conn._waiting

    run(scenario())


def test_a_cancelled_caller_does_not_shift_the_others_replies(run: Run, redis_url: str) -> None:
    async def scenario() -> None:
        client = RespClient(redis_url)
        try:
            await client.call("PING")
            slow = asyncio.ensure_future(client.call("BLPOP", "never", "0.3"))
            after = asyncio.ensure_future(client.call("ECHO", "mine"))
            await asyncio.sleep(0.05)
            slow.cancel()
            assert await after == b"mine"
            assert await client.call("ECHO", "next") == b"next"
        finally:
            await client.aclose()

    run(scenario())


def test_scripts_survive_a_script_flush(run: Run, redis_url: str) -> None:
    async def scenario() -> None:
        client = RespClient(redis_url)
        script = Script(client, "return {KEYS[1], ARGV[1] + 1}")
        try:
            await script.load()
            assert await script(["k"], [41]) == [b"k", 42]
            await client.call("SCRIPT", "FLUSH")
            assert await script(["k"], [1]) == [b"k", 2]  # NOSCRIPT, then EVAL
            assert await client.call("SCRIPT", "EXISTS", script.sha) == [1]
        finally:
            await client.aclose()

    run(scenario())


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def test_an_unanswered_call_times_out_with_every_call_in_flight(run: Run, silent_port: int) -> None:
    async def scenario() -> None:
        client = RespClient(f"redis://127.0.0.1:{silent_port}", timeout=0.3)
        started = time.monotonic()
        results = await asyncio.gather(
            *(client.call("PING") for _ in range(5)), return_exceptions=True
        )
        elapsed = time.monotonic() - started
        assert all(isinstance(r, RedisTimeoutError) for r in results), results
        assert 0.25 <= elapsed < 0.8

    run(scenario())


class _Wire:
    """A transport that keeps what is written (for _Connection alone, no server)."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def abort(self) -> None:
        self.aborted = True


def test_an_overdue_call_gets_one_more_round_of_io_before_it_fails(run: Run) -> None:
    async def scenario() -> None:
        conn = resp._Connection(asyncio.get_running_loop(), timeout=0.05)
        wire = _Wire()
        conn.connection_made(wire)  # type: ignore[arg-type]
        answered = conn.call(pack(["PING"]))
        time.sleep(0.06)  # noqa: ASYNC251 (a busy loop: the deadline passes, the reply waits)
        conn._check()  # the timer's turn comes first (uvloop runs timers before I/O)
        assert not answered.done() and not wire.aborted
        conn.data_received(b"+PONG\r\n")  # the next round of I/O reads it
        assert answered.result() == "PONG"

        unanswered = conn.call(pack(["PING"]))
        with pytest.raises(RedisTimeoutError):
            await unanswered  # past its deadline and the grace after it
        assert wire.aborted

    run(scenario())


def test_a_lost_connection_fails_its_calls_at_once_and_the_next_call_reconnects(run: Run) -> None:
    async def scenario(server: RedisServer) -> None:
        client = RespClient(server.url, timeout=5)
        try:
            await client.call("SET", "k", "v")
            blocked = asyncio.ensure_future(client.call("BLPOP", "never", "0"))
            await asyncio.sleep(0.05)
            started = time.monotonic()
            server.stop()
            with pytest.raises(RedisConnectionError):
                await blocked
            assert time.monotonic() - started < 1.0  # not the 5 s timeout
            with pytest.raises(OSError):  # refused while it is down
                await client.call("PING")
            server.start()
            assert await client.call("PING") == "PONG"
            assert await client.call("GET", "k") is None  # a fresh server
        finally:
            await client.aclose()

    with RedisServer() as server:
        run(scenario(server))


def test_password_database_and_unix_socket_from_the_url(run: Run) -> None:
    directory = tempfile.mkdtemp(prefix="gw-resp-")
    sock = str(Path(directory) / "redis.sock")

    async def scenario(url: str, probe: redis.Redis) -> None:
        for address in (url, f"unix://:s3cret@{sock}?db=5"):
            client = RespClient(address)
            try:
                await client.call("SET", "where", address[:4])
            finally:
                await client.aclose()
        assert probe.get("where") == b"unix"  # db 5 via the socket, last
        probe.select(3)
        assert probe.get("where") == b"redi"
        with pytest.raises(ResponseError, match=r"WRONGPASS|invalid password"):
            bad = RespClient(url.replace("s3cret", "wrong"))
            try:
                await bad.call("PING")
            finally:
                await bad.aclose()

    with RedisServer(requirepass="s3cret", unixsocket=sock, unixsocketperm="700") as server:
        url = f"redis://:s3cret@127.0.0.1:{server.port}/3"
        with redis.Redis(unix_socket_path=sock, password="s3cret", db=5) as probe:
            run(scenario(url, probe))


def test_tls_verified_against_the_given_ca(run: Run, tmp_path: Path) -> None:
    ca, key = self_signed(tmp_path)
    tls_port = free_port()
    options = {
        "tls-port": str(tls_port),
        "tls-cert-file": str(ca),
        "tls-key-file": str(key),
        "tls-ca-cert-file": str(ca),
        "tls-auth-clients": "no",
    }

    # What is tested is the certificate check, not the connect timeout: a TLS context (the
    # system's CAs: ~35 ms of CPU) and a handshake took more than the default 0.5 s on a
    # busy 2-core box.
    timeout = 3.0

    async def scenario() -> None:
        client = RespClient(f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={ca}", timeout=timeout)
        try:
            assert await client.call("ECHO", "over tls") == b"over tls"
        finally:
            await client.aclose()
        # the system's CAs
        untrusted = RespClient(f"rediss://127.0.0.1:{tls_port}/0", timeout=timeout)
        try:
            with pytest.raises(ssl.SSLCertVerificationError):
                await untrusted.call("PING")
        finally:
            await untrusted.aclose()

    with RedisServer(**options):
        run(scenario())


def test_addresses() -> None:
    assert Address.from_url("redis://h:7000/2") == Address(host="h", port=7000, db=2)
    assert Address.from_url("rediss://u:p%40ss@h") == Address(
        host="h", tls=True, username="u", password="p@ss"
    )
    assert Address.from_url("unix:///run/redis.sock?db=4") == Address(path="/run/redis.sock", db=4)
    assert Address.from_url("rediss://h?ssl_ca_certs=/etc/ca.pem").ca_certs == "/etc/ca.pem"
    for bad in ("http://h", "redis://h/x"):
        with pytest.raises(ValueError, match="redis_url"):
            Address.from_url(bad)
