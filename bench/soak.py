"""Soak: minutes of mixed traffic through one gateway, watching for anything that grows.

    .venv/bin/python -m bench.soak [--minutes 4] [--concurrency 16]

Loopback only, bounded in time. Traffic mix: completed streams, clients that leave after a
few events, upstream errors mid-stream, a rate-limited key, non-streaming calls. Every
`--every` seconds it samples the gateway's RSS, open file descriptors, asyncio tasks and
open requests (from /healthz) and Redis's key count, then prints the curve and compares
the first sample after warm-up with the last.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil
import redis

from gateway.config import hash_key
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway_proc import GatewayProcess, test_config
from tests.support.redis_server import RedisServer

KEY, LIMITED = "sk-soak", "sk-soak-limited"


async def one_request(client: httpx.AsyncClient, url: str, kind: str) -> str:
    key = LIMITED if kind == "limited" else KEY
    model = {"error": "gpt-midstream", "cancel": "soak-paced"}.get(kind, "soak-fast")
    body = {
        "model": model,
        "stream": kind != "plain",
        "messages": [{"role": "user", "content": "soak"}],
        "max_tokens": 50,
    }
    headers = {"authorization": f"Bearer {key}"}
    async with client.stream("POST", url, headers=headers, json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return str(response.status_code)
        events = 0
        async for line in response.aiter_lines():
            events += line.startswith("data: ")
            if kind == "cancel" and events == 3:
                return "cancelled"
    return kind


async def traffic(url: str, deadline: float, concurrency: int, counts: Counter[str]) -> None:
    kinds = ["ok"] * 12 + ["cancel"] * 3 + ["error"] * 2 + ["limited"] * 2 + ["plain"]

    async def worker(seed: int) -> None:
        rng = random.Random(seed)
        async with httpx.AsyncClient(timeout=30) as client:
            while time.monotonic() < deadline:
                try:
                    counts[await one_request(client, url, rng.choice(kinds))] += 1
                except httpx.HTTPError as exc:
                    counts[f"client error {type(exc).__name__}"] += 1

    await asyncio.gather(*(worker(i) for i in range(concurrency)))


def sample(gw: GatewayProcess, r: redis.Redis, started: float) -> dict[str, float]:
    assert gw.proc is not None
    proc = psutil.Process(gw.proc.pid)
    health = httpx.get(gw.url + "/healthz", timeout=5).json()
    return {
        "t": time.monotonic() - started,
        "rss_mb": proc.memory_info().rss / 2**20,
        "fds": proc.num_fds(),
        "tasks": health["tasks"],
        "open": health["open_requests"],
        "redis_keys": r.dbsize(),
    }


async def sampler(
    gw: GatewayProcess, r: redis.Redis, deadline: float, every: float, rows: list[dict[str, float]]
) -> None:
    started = time.monotonic()
    while time.monotonic() < deadline:
        rows.append(await asyncio.to_thread(sample, gw, r, started))
        await asyncio.sleep(every)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--every", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=30.0)
    args = parser.parse_args()
    with FakeUpstream() as upstream, RedisServer() as server, tempfile.TemporaryDirectory() as tmp:
        server.start()
        config = test_config(
            upstream.url, redis_url=server.url, logging={"file": f"{tmp}/requests.log"}
        )
        config["models"] += [
            {"name": "soak-fast", "provider": "fake", "upstream_model": "text?n=30&pace_ms=2"},
            {"name": "soak-paced", "provider": "fake", "upstream_model": "text?n=40&pace_ms=50"},
        ]
        config["keys"] = [
            {
                "id": "soak",
                "key_sha256": hash_key(KEY),
                "limits": {"rpm": 100_000, "max_concurrent": 64},
            },
            {"id": "soak-limited", "key_sha256": hash_key(LIMITED), "limits": {"rpm": 30}},
        ]
        with GatewayProcess(config, Path(tmp)) as gw, redis.Redis.from_url(server.url) as r:
            deadline = time.monotonic() + args.minutes * 60
            counts: Counter[str] = Counter()
            rows: list[dict[str, float]] = []

            async def run() -> None:
                await asyncio.gather(
                    traffic(gw.url + "/v1/chat/completions", deadline, args.concurrency, counts),
                    sampler(gw, r, deadline, args.every, rows),
                )

            asyncio.run(run())
            time.sleep(1.0)
            rows.append(sample(gw, r, deadline - args.minutes * 60))
    print(
        f"soak: {args.minutes:g} min, {args.concurrency} concurrent clients, "
        f"{sum(counts.values())} requests: {dict(counts.most_common())}"
    )
    print(f"{'t (s)':>7} {'RSS MB':>8} {'fds':>5} {'tasks':>6} {'open':>5} {'redis keys':>10}")
    for row in rows:
        print(
            f"{row['t']:7.0f} {row['rss_mb']:8.1f} {row['fds']:5.0f} {row['tasks']:6.0f} "
            f"{row['open']:5.0f} {row['redis_keys']:10.0f}"
        )
    warm = next((row for row in rows if row["t"] >= args.warmup), rows[0])
    last = rows[-1]
    print(
        f"after warm-up ({warm['t']:.0f} s) -> end: RSS {warm['rss_mb']:.1f} -> {last['rss_mb']:.1f} MB, "
        f"fds {warm['fds']:.0f} -> {last['fds']:.0f}, tasks {warm['tasks']:.0f} -> {last['tasks']:.0f}, "
        f"redis keys {warm['redis_keys']:.0f} -> {last['redis_keys']:.0f}"
    )


if __name__ == "__main__":
    main()
