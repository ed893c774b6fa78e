"""CPU per admission of the Redis limiter: one Redis (the RESP client) against a Redis
Cluster of 3 masters + 3 replicas (`gateway.limits.cluster`: per-master RESP connections in
the steady state; and, for comparison, every call through redis-py's Cluster client),
measured in one run.

    .venv/bin/python -m bench.limits_cost [--admissions 5000] [--rounds 3]

Each round runs the admissions one at a time and in bursts of 50 (`asyncio.gather`, as a
connection storm does) against one key, and reads `time.process_time()` of this process:
the gateway's share, not Redis's. Medians of the rounds; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

from gateway.config import KeyConfig, Limits
from gateway.limits.redis_store import RedisLimiter
from tests.support.redis_cluster import RedisCluster
from tests.support.redis_server import RedisServer

KEY = KeyConfig(id="bench", key_sha256="0" * 64, limits=Limits(rpm=10**9, tpm=10**12))


async def cpu_per_call(one: Callable[[], Awaitable[None]], calls: int, burst: int) -> float:
    """µs of this process's CPU per `one()`, run `calls` times in bursts of `burst`
    (`asyncio.gather`), after 100 calls that warm connections, scripts and caches."""
    for _ in range(100):
        await one()
    start = time.process_time()
    for _ in range(calls // burst):
        await asyncio.gather(*(one() for _ in range(burst)))
    return (time.process_time() - start) / calls * 1e6


async def cpu_per_admission(url: str, admissions: int, burst: int, redis_py_only: bool) -> float:
    """µs of this process's CPU per admit + settle."""
    limiter = RedisLimiter(url, on_backend_error=lambda: None)
    if redis_py_only:
        # Never learn a route: every call goes through redis-py, as a plain RedisCluster.
        limiter._client._route = lambda key: None  # type: ignore[attr-defined]
    await limiter.start()
    try:

        async def one() -> None:
            admission = await limiter.admit(KEY, 1, "bench")
            assert admission.reservation is not None and not admission.reservation.degraded
            limiter.settle_soon(admission.reservation, 1)

        return await cpu_per_call(one, admissions, burst)
    finally:
        await limiter.aclose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--admissions", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with RedisServer() as single, RedisCluster() as cluster:
        targets = {
            "one Redis, RESP client": (single.url, False),
            "Cluster, gateway.limits.cluster": (cluster.url, False),
            "Cluster, every call through redis-py": (cluster.url, True),
        }
        for burst in (1, 50):
            print(f"admit + settle, burst {burst}: µs CPU per admission (median of rounds)")
            for name, (url, redis_py_only) in targets.items():
                runs = [
                    asyncio.run(cpu_per_admission(url, args.admissions, burst, redis_py_only))
                    for _ in range(args.rounds)
                ]
                spread = f"{min(runs):.0f}-{max(runs):.0f}"
                print(f"  {name:<44} {statistics.median(runs):6.1f}   ({spread})")


if __name__ == "__main__":
    main()
