"""CPU per upstream-account acquire + settle (`gateway.limits.upstream.UpstreamLimits`),
over the memory backend and one real Redis, in one run; beside it the bare client
limiter's admit + settle on the same backend, so the upstream layer's own share shows.

    .venv/bin/python -m bench.upstream_limits_cost [--calls 5000] [--rounds 3]

Each round runs the calls one at a time and in bursts of 50 (`asyncio.gather`) against one
deployment with rpm and tpm far above what the run uses (the leaky bucket and the counts
are on the path, nothing waits), and reads `time.process_time()` of this process: the
gateway's share, not Redis's. Medians of the rounds; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
from collections.abc import Awaitable, Callable

from bench.limits_cost import cpu_per_call
from gateway.config import KeyConfig, Limits
from gateway.limits.base import Limiter
from gateway.limits.memory import MemoryLimiter
from gateway.limits.redis_store import RedisLimiter
from gateway.limits.upstream import UpstreamLimits
from tests.support.redis_server import RedisServer

LIMITS = Limits(rpm=10**9, tpm=10**12)
KEY = KeyConfig(id="bench", key_sha256="", limits=LIMITS)
WHAT = {
    "upstream": "upstream acquire + settle",
    "varying": "upstream, estimate varying",
    "client": "client admit + settle",
}


async def cpu_per_pair(store: Limiter, calls: int, burst: int, what: str) -> float:
    """µs of this process's CPU per acquire + settle (`upstream`; `varying`: with an
    estimate that differs on every call, as real prompts do) or admit + settle
    (`client`)."""
    await store.start()
    up = UpstreamLimits(store)
    estimates = itertools.cycle(range(100, 100 + (1000 if what == "varying" else 1)))
    try:
        one: Callable[[], Awaitable[None]]
        if what != "client":

            async def one() -> None:
                ticket = await up.acquire("bench/deployment", LIMITS, next(estimates), wait=0)
                assert ticket is not None and not ticket.degraded
                await up.settle(ticket, 90)

        else:

            async def one() -> None:
                admission = await store.admit(KEY, 100, "bench")
                assert admission.reservation is not None
                store.settle_soon(admission.reservation, 90)

        return await cpu_per_call(one, calls, burst)
    finally:
        await up.aclose()
        await store.aclose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with RedisServer() as redis:
        backends: dict[str, Callable[[], Limiter]] = {
            "memory": MemoryLimiter,
            "one Redis": lambda: RedisLimiter(redis.url, on_backend_error=lambda: None),
        }
        for burst in (1, 50):
            print(f"burst {burst}: µs CPU per call pair (median of rounds, min-max)")
            for name, build in backends.items():
                for what, label in WHAT.items():
                    runs = [
                        asyncio.run(cpu_per_pair(build(), args.calls, burst, what))
                        for _ in range(args.rounds)
                    ]
                    spread = f"{min(runs):.1f}-{max(runs):.1f}"
                    print(
                        f"  {name + ', ' + label:<48} {statistics.median(runs):7.1f}   ({spread})"
                    )


if __name__ == "__main__":
    main()
