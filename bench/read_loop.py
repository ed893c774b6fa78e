"""CPU of one relayed upstream read in push mode, on the real objects, in a loop.

The path `paced` and `scale` pay per token: the native transport's `Connection`
(`data_received`: the chunked body parsed by httptools) hands the read's bytes to its
listener, the OpenAI stream's `_pushed`, which makes the client's bytes (`_client_bytes`,
the redactor's scrub), hands them to the `Pump` (gaps, the watch's stamp),
which writes them with the server's `_Cycle` (chunked framing). Both sockets are fakes that
keep nothing; everything else is the gateway's own code. Each read is one event the bench's
fake upstream sends (`bench.upstream.StreamPlan.content`), in its own chunk.

    python -m bench.read_loop [--reads N] [--streams S] [--repeat R] [--profile]

prints µs of thread CPU per read (the median and the best of R runs of N reads), with the
reads going round S streams in turn (as `paced` has 500 streams open: each read then finds
its stream's objects out of the CPU's caches) or all to one. On a busy machine the
instructions per read are the steadier figure:

    valgrind --tool=callgrind --toggle-collect='*starmap_next*' --callgrind-out-file=/dev/null \
        python -m bench.read_loop --repeat 1 --reads 10000 --streams 500

(the instructions collected, divided by the reads).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import itertools
import operator
import pstats
import statistics
import time
from typing import Any

from bench.upstream import StreamPlan
from gateway.config import Timeouts
from gateway.observability.records import Gaps
from gateway.providers.openai import OpenAIStream
from gateway.providers.redact import Redactor
from gateway.relay.pump import Pump
from gateway.relay.watch import StreamWatch
from gateway.server.cycle import _Cycle, _Flow
from gateway.transports.http11 import Connection
from gateway.transports.native import NativeBody, NativeResponse

_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
)


class _Socket:
    """A transport that takes every write at once and keeps nothing."""

    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self.bytes += len(data)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Pool:
    def lost(self, conn: Connection) -> None:
        pass

    def release(self, conn: Connection) -> None:
        pass


def _writer(socket: _Socket) -> _Cycle:
    """A `_Cycle` as it is once the response started: chunked, its head written."""
    cycle = _Cycle.__new__(_Cycle)
    cycle.transport = socket  # type: ignore[assignment]
    cycle.flow = _Flow(socket)  # type: ignore[arg-type]
    cycle.response_started = True
    cycle.response_complete = False
    cycle.chunked_encoding = True
    cycle.disconnected = False
    cycle._head = None
    return cycle


async def _setup(reads: int) -> tuple[Connection, list[bytes], _Socket, Any]:
    loop = asyncio.get_running_loop()
    conn = Connection(_Pool(), (b"http", "upstream", 80), loop)
    upstream = _Socket()
    conn.connection_made(upstream)  # type: ignore[arg-type]
    head = conn._loop.create_future()
    conn._head = head
    conn.data_received(_HEAD)
    response = NativeResponse(conn._status, conn._fields, NativeBody(conn, None))
    stream = OpenAIStream(
        response,
        "fast",
        include_usage=False,
        redact=Redactor(["sk-upstream-bench"]),
    )
    client = _Socket()

    async def send(message: Any) -> None:
        raise AssertionError("the writer takes every read")

    watch = StreamWatch(send, Timeouts())
    pump = Pump(send, watch, Gaps(), time.perf_counter(), _writer(client))
    assert stream.push(pump)
    plan = StreamPlan(b"user-1", b"bench-n50-p20", reads + 1, 0.02, True)
    chunks = [plan.content(i) for i in range(1, reads + 1)]
    return conn, chunks, client, stream


def measure(reads: int, streams: int, repeat: int, profile: bool = False) -> list[float]:
    """µs of thread CPU per read, one figure per run."""
    results: list[float] = []
    each = max(1, reads // streams)

    async def main() -> None:
        for _ in range(repeat):
            opened = [await _setup(each) for _ in range(streams)]
            # Read i of every stream, then read i + 1 of every stream, ...
            reads_in_turn = [
                (conn.data_received, chunks[i])
                for i in range(each)
                for conn, chunks, _, _ in opened
            ]
            profiler = cProfile.Profile(time.thread_time_ns, 1e-9) if profile else None
            if profiler is not None:
                profiler.enable()
            start = time.thread_time_ns()
            # In C (no Python loop of its own), and the one `starmap` of the run: a count of
            # instructions can take just the reads (callgrind's --toggle-collect='*starmap_next*').
            collections.deque(itertools.starmap(operator.call, reads_in_turn), maxlen=0)
            spent = time.thread_time_ns() - start
            if profiler is not None:
                profiler.disable()
                pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
            for _, chunks, client, stream in opened:
                # Framed alike on both sides: as many bytes out as in.
                assert client.bytes == sum(len(c) for c in chunks), "not all relayed"
                assert stream.state.completion_estimate == each
            results.append(spent / (each * streams) / 1000)

    asyncio.run(main())
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=20_000)
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if args.profile:
        measure(args.reads, args.streams, 1, profile=True)
        return
    runs = measure(args.reads, args.streams, args.repeat)
    print(
        f"µs per read: median {statistics.median(runs):.3f}, best {min(runs):.3f} "
        f"({args.repeat} runs of {args.reads} reads over {args.streams} stream(s))"
    )


if __name__ == "__main__":
    main()
