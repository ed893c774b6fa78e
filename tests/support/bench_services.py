"""The bench's own services for tests of the bench: its fake upstream, and a small burst of
streams to send through a relay (`bench.run.run_client`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.procs import Service, free_port, python_service
from bench.run import Scenario


@contextmanager
def bench_upstream(tmp: Path) -> Iterator[Service]:
    """`bench.upstream` on a free port, stopped at the end."""
    port = free_port()
    service = python_service("upstream", "bench.upstream", ["--port", str(port)], tmp, port)
    try:
        yield service.start()
    finally:
        service.stop()


def small_scale(procs: int) -> Scenario:
    """41 streams of 5 chunks 20 ms apart, all at once, each on a new connection."""
    return Scenario(
        name="small-scale",
        model="bench-n5-p20",
        streams=41,
        concurrency=41,
        fresh=True,
        warmup=4,
        what=f"41 streams of 5 chunks 20 ms apart over {procs} client process(es)",
        procs=procs,
        deadline=30,
    )
