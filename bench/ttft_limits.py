"""Time to first token of 300 sequential streams: direct, and through the gateway with
limits off, in memory and in Redis, measured in one run.

    .venv/bin/python -m bench.ttft_limits [--streams 300]

Loopback only; the fake provider is `tests/support/fake_upstream.py` (20 chunks, no delay).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from gateway.config import hash_key
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway_proc import GatewayProcess, sequential_ttfts, test_config
from tests.support.redis_server import RedisServer


def ttfts(url: str, key: str, model: str, n: int) -> list[float]:
    # The first 20 warm connections and caches up.
    return sequential_ttfts(url, key, model, n + 20)[20:]


def summary(name: str, values: list[float], base: float | None) -> str:
    p50 = statistics.median(values) * 1000
    p99 = statistics.quantiles(values, n=100)[98] * 1000
    added = "" if base is None else f"  (+{p50 - base:.2f} ms p50 over direct)"
    return f"{name:<28} p50 {p50:7.2f} ms   p99 {p99:7.2f} ms{added}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=300)
    n = parser.parse_args().streams
    with FakeUpstream() as upstream, RedisServer() as redis, tempfile.TemporaryDirectory() as tmp:
        redis.start()
        model = "text?n=20"
        direct = ttfts(upstream.url + "/v1/chat/completions", "none", model, n)
        base = statistics.median(direct) * 1000
        print(summary("direct to the fake upstream", direct, None))
        limits = {
            "rpm": 1_000_000,
            "tpm": 10**9,
            "max_concurrent": 1000,
            "daily_tokens": 10**12,
            "monthly_tokens": 10**13,
        }
        runs = [
            ("gateway, no limits", "", {}),
            ("gateway, in-memory limits", "", limits),
            ("gateway, Redis limits", redis.url, limits),
        ]
        for name, redis_url, key_limits in runs:
            config = test_config(upstream.url, redis_url=redis_url, logging={"file": f"{tmp}/log"})
            config["models"].append({"name": "bench", "provider": "fake", "upstream_model": model})
            config["keys"] = [
                {"id": "bench", "key_sha256": hash_key("sk-bench"), "limits": key_limits}
            ]
            with GatewayProcess(config, Path(tmp)) as gw:
                values = ttfts(gw.url + "/v1/chat/completions", "sk-bench", "bench", n)
            print(summary(name, values, base))


if __name__ == "__main__":
    main()
