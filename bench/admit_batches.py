"""Redis's CPU per admission, one call each against one call per key and loop turn
(`gateway.limits.redis_admit`), on a throwaway `redis-server`.

    .venv/bin/python -m bench.admit_batches [--admissions 4800] [--burst 48] [--rounds 3]

Three ways to admit the same `--admissions` on one key (each round a fresh key, so every
way starts from the same empty state): one at a time (each awaited: one ADMIT on an idle
connection, the lone request's path), in bursts of `--burst` (`asyncio.gather`, as a loop
turn starts them) with batching off (every admission its own ADMIT, pipelined), and the
same bursts batched (ADMIT_MANY). Read per admission: `INFO commandstats`' EVALSHA µs
(the scripts' own time), `INFO cpu` (the whole server: reading commands, running them,
writing replies) and this process's CPU (`time.process_time()`: the gateway's share).
Nothing is settled while measuring (settles are EVALSHA calls too) and leases last an hour
(no renewal runs). Medians of the rounds; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import redis

from gateway.config import Budget, KeyConfig, Limits
from gateway.limits.redis_store import RedisLimiter
from tests.support.redis_server import RedisServer

LIMITS = Limits(
    rpm=10**9, tpm=10**12, max_concurrent=10**6, daily_tokens=10**12, monthly_tokens=10**13
)
BUDGET = Budget(daily_usd=1e6, monthly_usd=1e6)
"""Every limit and budget set (so every check runs) and none reached (so every admission
writes), as on `bench.procs`' key; each admission reserves `COST` nano-USD."""
COST = 2_500


def _server_cpu(probe: redis.Redis) -> tuple[float, float]:
    """(EVALSHA µs, server CPU µs) so far."""
    stats: dict[str, Any] = probe.info("commandstats")
    cpu: dict[str, Any] = probe.info("cpu")
    evalsha = stats.get("cmdstat_evalsha", {}).get("usec", 0)
    return float(evalsha), (float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])) * 1e6


async def _round(url: str, way: str, admissions: int, burst: int, n: int) -> tuple[float, ...]:
    """µs per admission: EVALSHA, the Redis server, this process."""
    limiter = RedisLimiter(url, on_backend_error=lambda: None, lease_ttl=3600)
    limiter._batching = way == "batched"
    key = KeyConfig(id=f"bench-{way}-{n}", key_sha256="0" * 64, limits=LIMITS, budget=BUDGET)
    await limiter.start()
    try:
        for _ in range(20):  # connection, scripts, the key's cached call parts
            await limiter.admit(key, 1, "warm", COST)
        with redis.Redis.from_url(url) as probe:
            before, cpu_before = _server_cpu(probe)
            start = time.process_time()
            if way == "one at a time":
                for _ in range(admissions):
                    await limiter.admit(key, 1, "bench", COST)
            else:
                for _ in range(admissions // burst):
                    await asyncio.gather(
                        *(limiter.admit(key, 1, "bench", COST) for _ in range(burst))
                    )
            own = time.process_time() - start
            after, cpu_after = _server_cpu(probe)
        return (
            (after - before) / admissions,
            (cpu_after - cpu_before) / admissions,
            own / admissions * 1e6,
        )
    finally:
        await limiter.aclose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--admissions", type=int, default=4800)
    parser.add_argument("--burst", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ways = ("one at a time", "bursts, not batched", "batched")
    with RedisServer() as server:
        results: dict[str, list[tuple[float, ...]]] = {way: [] for way in ways}
        n = 0
        for _ in range(args.rounds):
            for way in ways:  # alternating, so drift hits every way alike
                n += 1
                results[way].append(
                    asyncio.run(_round(server.url, way, args.admissions, args.burst, n))
                )
    print(
        f"µs per admission, {args.admissions} admissions, bursts of {args.burst}, medians of {args.rounds}"
    )
    print(f"  {'':<22} {'EVALSHA':>9} {'Redis CPU':>10} {'gateway CPU':>12}")
    for way in ways:
        cols = [statistics.median(r[i] for r in results[way]) for i in range(3)]
        print(f"  {way:<22} {cols[0]:9.1f} {cols[1]:10.1f} {cols[2]:12.1f}")


if __name__ == "__main__":
    main()
