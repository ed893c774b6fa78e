"""What routing between deployments costs, and what a client sees when one upstream dies.

    .venv/bin/python -m bench.routing [--streams 500] [--baseline /work/main]

(a) Time to first token of sequential streams (20 chunks, no delay) in one run, through:
    the code of `--baseline` (a checkout without deployments; skipped when not given), a
    plain model (`provider:`), a model with one deployment and one with four (all four on
    the same fake provider, so only the routing differs). Rounds of 100 per target,
    interleaved, so drift on a shared box hits every target alike.
(b) Two upstream processes behind one model (weighted 1:1, the default health), four
    clients streaming short answers back to back; after `--before` seconds one upstream is
    SIGKILLed, the clients go on for `--during` seconds. Printed: requests, errors
    (refused, or broken after the first byte) and TTFT p50/p99 before and during.

Loopback only; fakes are tests/support/fake_upstream.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from gateway.config import hash_key
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway_proc import GatewayProcess, sequential_ttfts, test_config
from tests.support.upstream_proc import UpstreamProcess

KEY = "sk-bench"
ROUND = 100


def percentiles(values: list[float]) -> tuple[float, float]:
    return statistics.median(values) * 1000, statistics.quantiles(values, n=100)[98] * 1000


def base_config(upstream_url: str, tmp: str) -> dict[str, Any]:
    config = test_config(upstream_url, logging={"file": f"{tmp}/log"})
    config["keys"] = [{"id": "bench", "key_sha256": hash_key(KEY)}]
    return config


def added_ttft(n: int, baseline: str | None) -> None:
    model = "text?n=20"
    with FakeUpstream() as upstream, tempfile.TemporaryDirectory() as tmp:
        config = base_config(upstream.url, tmp)
        fakes = [dict(config["providers"][0], name=f"fake{i}") for i in range(1, 4)]
        config["providers"] += fakes
        config["models"] += [
            {"name": "plain", "provider": "fake", "upstream_model": model},
            {"name": "one", "deployments": [{"provider": "fake", "upstream_model": model}]},
            {
                "name": "four",
                "deployments": [
                    {"provider": p, "upstream_model": model}
                    for p in ("fake", "fake1", "fake2", "fake3")
                ],
            },
        ]
        gateways = [GatewayProcess(config, Path(tmp)).start()]
        targets = [
            ("plain model (provider:)", gateways[0], "plain"),
            ("1 deployment", gateways[0], "one"),
            ("4 deployments", gateways[0], "four"),
        ]
        if baseline:
            old = base_config(upstream.url, tmp)
            old["models"].append({"name": "plain", "provider": "fake", "upstream_model": model})
            # PYTHONSAFEPATH: the current directory (this checkout) must not come first.
            path = baseline + os.pathsep + os.environ.get("PYTHONPATH", "")
            env = {"PYTHONPATH": path, "PYTHONSAFEPATH": "1"}
            gateways.append(GatewayProcess(old, Path(tmp), env=env).start())
            targets.insert(0, (f"baseline {baseline}", gateways[1], "plain"))
        try:
            values: dict[str, list[float]] = {name: [] for name, _, _ in targets}
            for _name, gw, m in targets:  # warm-up: connections, caches
                sequential_ttfts(gw.url + "/v1/chat/completions", KEY, m, 20)
            for _ in range(max(n // ROUND, 1)):
                for name, gw, m in targets:
                    url = gw.url + "/v1/chat/completions"
                    values[name] += sequential_ttfts(url, KEY, m, ROUND)
        finally:
            for gw in gateways:
                gw.stop()
    first = targets[0][0]
    base50, base99 = percentiles(values[first])
    print(f"(a) TTFT of {len(values[first])} sequential streams per target")
    for name, _, _ in targets:
        p50, p99 = percentiles(values[name])
        delta = "" if name == first else f"   vs first: {p50 - base50:+.3f} / {p99 - base99:+.3f}"
        print(f"  {name:<32} p50 {p50:6.3f} ms  p99 {p99:6.3f} ms{delta}")


class Client(threading.Thread):
    """Streams short answers one after another until told to stop."""

    def __init__(self, url: str, stop: threading.Event) -> None:
        super().__init__()
        self.url, self.stop = url, stop
        self.results: list[tuple[float, float | None, str, float]] = []
        """(start, ttft or None, 'ok' | 'refused NNN' | 'broken', end)"""

    def run(self) -> None:
        body = {"model": "pair", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        headers = {"authorization": f"Bearer {KEY}"}
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                start = time.time()
                began = time.perf_counter()
                ttft: float | None = None
                try:
                    with client.stream("POST", self.url, headers=headers, json=body) as r:
                        if r.status_code != 200:
                            r.read()
                            self.results.append(
                                (start, None, f"refused {r.status_code}", time.time())
                            )
                            continue
                        done = False
                        for line in r.iter_lines():
                            if ttft is None and line.startswith("data: "):
                                ttft = time.perf_counter() - began
                            if line == "data: [DONE]":
                                done = True
                        self.results.append((start, ttft, "ok" if done else "broken", time.time()))
                except httpx.HTTPError:
                    self.results.append((start, ttft, "broken", time.time()))


def killed_upstream(before: float, during: float) -> None:
    ups = [UpstreamProcess().start(), UpstreamProcess().start()]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = base_config(ups[0].url, tmp)
            config["providers"] = [
                {"name": f"up{i}", "type": "openai", "base_url": u.url + "/v1"}
                for i, u in enumerate(ups)
            ]
            config["models"] = [
                {
                    "name": "pair",
                    "deployments": [
                        {"provider": f"up{i}", "upstream_model": "text?n=10&pace_ms=2"}
                        for i in range(2)
                    ],
                }
            ]
            with GatewayProcess(config, Path(tmp)) as gw:
                stop = threading.Event()
                clients = [Client(gw.url + "/v1/chat/completions", stop) for _ in range(4)]
                for c in clients:
                    c.start()
                time.sleep(before)
                killed_at = time.time()
                ups[0].kill()
                time.sleep(during)
                stop.set()
                for c in clients:
                    c.join()
    finally:
        for u in ups:
            u.stop()
    results = [r for c in clients for r in c.results]
    print(f"(b) 2 deployments, 4 clients; one upstream SIGKILLed after {before:g} s")
    for name, part in (
        ("before", [r for r in results if r[3] < killed_at]),
        ("in flight at the kill", [r for r in results if r[0] < killed_at <= r[3]]),
        ("after", [r for r in results if r[0] >= killed_at]),
    ):
        errors = [r for r in part if r[2] != "ok"]
        ttfts = [r[1] for r in part if r[1] is not None]
        p50, p99 = percentiles(ttfts) if len(ttfts) > 1 else (float("nan"), float("nan"))
        worst = max(ttfts) * 1000 if ttfts else float("nan")
        kinds = sorted({r[2] for r in errors})
        print(
            f"  {name:<21} requests {len(part):5d}  errors {len(errors)} {kinds or ''}  "
            f"TTFT p50 {p50:.2f} ms  p99 {p99:.2f} ms  max {worst:.2f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.routing")
    parser.add_argument("--streams", type=int, default=500, help="(a): per target")
    parser.add_argument("--baseline", help="(a): a checkout without deployments, run beside")
    parser.add_argument("--before", type=float, default=3.0, help="(b): seconds before the kill")
    parser.add_argument("--during", type=float, default=5.0, help="(b): seconds after it")
    parser.add_argument("--only", choices=("a", "b"), help="run one part")
    args = parser.parse_args()
    if args.only != "b":
        added_ttft(args.streams, args.baseline)
    if args.only != "a":
        killed_upstream(args.before, args.during)


if __name__ == "__main__":
    main()
