"""Metrics and the request log through the real server, after real traffic."""

from __future__ import annotations

import contextlib
import json
import os
import re
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from gateway.config import hash_key
from tests.integration.test_stream_semantics import metric
from tests.observability.test_grafana_dashboard import load_dashboard, promql
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway_proc import KEY_A, GatewayProcess, sequential_ttfts, test_config

AUTH = {"authorization": f"Bearer {KEY_A}"}
LIMITED = "sk-limited"


def stream(gateway: GatewayProcess, model: str, key: str = KEY_A, stop_after: int = 0) -> int:
    """One streamed request; returns its status. `stop_after` > 0 leaves after that many events."""
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST",
            gateway.url + "/v1/chat/completions",
            headers={"authorization": f"Bearer {key}"},
            json=body,
        ) as response,
    ):
        events = 0
        for line in response.iter_lines():
            events += line.startswith("data: ")
            if stop_after and events >= stop_after:
                break
        return response.status_code


def config_with_limited_key(upstream: FakeUpstream, **extra: Any) -> dict[str, Any]:
    config = test_config(upstream.url, **extra)
    config["keys"].append({"id": "limited", "key_sha256": hash_key(LIMITED), "limits": {"rpm": 1}})
    return config


def test_metrics_after_mixed_traffic(upstream: FakeUpstream, tmp_path: Path) -> None:
    with GatewayProcess(config_with_limited_key(upstream), tmp_path) as gw:
        for _ in range(3):
            assert stream(gw, "gpt-test") == 200
        assert stream(gw, "gpt-paced", stop_after=3) == 200
        assert stream(gw, "gpt-midstream") == 200
        assert stream(gw, "gpt-test", key=LIMITED) == 200
        assert stream(gw, "gpt-test", key=LIMITED) == 429
        assert upstream.wait_for(lambda: metric(gw, "gateway_active_streams") == 0, timeout=3)
        # every request's record counted (each has one duration), not a fixed 0.2 s
        assert upstream.wait_for(
            lambda: metric(gw, "gateway_request_duration_seconds_count") == 7, timeout=10
        )
        text = httpx.get(gw.url + "/metrics").text
        print(
            "\n".join(
                line for line in text.splitlines() if line.startswith("gateway_requests_total")
            )
        )

        def count(name: str, **labels: str) -> float:
            return metric(gw, name, **labels)

        assert count("gateway_requests_total", model="gpt-test", outcome="completed") == 4
        assert count("gateway_requests_total", model="gpt-paced", outcome="client_cancelled") == 1
        assert count("gateway_requests_total", model="gpt-midstream", outcome="upstream_error") == 1
        assert count("gateway_requests_total", outcome="rate_limited", status="429") == 1
        assert count("gateway_rate_limited_total", key_id="limited", limit="rpm") == 1
        assert count("gateway_upstream_errors_total", provider="fake", kind="error_event") == 1
        # Every stream that started has one TTFT and one duration observation.
        assert count("gateway_time_to_first_token_seconds_count") == 6
        assert count("gateway_request_duration_seconds_count") == 7
        assert count("gateway_tokens_total", key_id="team-a", direction="completion") > 36
        assert count("gateway_active_streams") == 0
        # Every metric name the dashboard queries is in the real exposition.
        exposed = set(re.findall(r"^(gateway_\w+)", text, re.M))
        for expr in promql(load_dashboard()):
            for name in re.findall(r"\bgateway_\w+", expr):
                assert name in exposed, name


def test_two_workers_add_up(upstream: FakeUpstream, tmp_path: Path) -> None:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")}
    os.makedirs(env["PROMETHEUS_MULTIPROC_DIR"])
    with GatewayProcess(test_config(upstream.url), tmp_path, workers=2, env=env) as gw:
        for _ in range(20):
            # New connections so both workers get some.
            assert stream(gw, "gpt-test") == 200
        assert metric(gw, "gateway_requests_total", outcome="completed") == 20
        assert metric(gw, "gateway_time_to_first_token_seconds_count") == 20
        pids = {line for line in gw.output().splitlines() if "draining" in line}
        assert not pids


def ttft(gateway: GatewayProcess, n: int) -> float:
    url = gateway.url + "/v1/chat/completions"
    return statistics.median(sequential_ttfts(url, KEY_A, "gpt-test", n))


def ttfts_side_by_side(a: GatewayProcess, b: GatewayProcess, n: int) -> tuple[float, float]:
    """The median TTFT of `n` streams on each of `a` and `b`, one stream on each in turn
    (each on its kept-alive connection): both see the same moments of a busy box. (Run one
    gateway's 100 after the other's, a change in the box's load between them showed as a
    ratio of 1.5 and more.)"""
    body = {"model": "gpt-test", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    times: tuple[list[float], list[float]] = ([], [])
    with httpx.Client(timeout=30) as on_a, httpx.Client(timeout=30) as on_b:
        for _ in range(n):
            for gateway, client, seen in ((a, on_a, times[0]), (b, on_b, times[1])):
                start = time.perf_counter()
                with client.stream(
                    "POST", gateway.url + "/v1/chat/completions", headers=AUTH, json=body
                ) as response:
                    lines = response.iter_lines()
                    next(line for line in lines if line.startswith("data: "))
                    seen.append(time.perf_counter() - start)
                    for _ in lines:
                        pass
    return statistics.median(times[0]), statistics.median(times[1])


def test_a_blocking_log_sink_does_not_slow_streams(upstream: FakeUpstream, tmp_path: Path) -> None:
    fifo = tmp_path / "blocked.log"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # held open, never read: writes block
    # Fill the pipe before the gateway writes, so its first write blocks whatever the
    # pipe's capacity (64 KiB here; a CI kernel's was bigger than the 350 lines this test
    # logs, so the writer never blocked and the queue was empty at the end).
    filler = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(filler, b"x" * 65536)
    os.close(filler)
    try:
        blocked_config = test_config(upstream.url, logging={"file": str(fifo), "queue_size": 50})
        with (
            GatewayProcess(test_config(upstream.url), tmp_path) as normal,
            GatewayProcess(blocked_config, tmp_path) as blocked,
        ):
            ttft(normal, 20)
            ttft(blocked, 250)  # warm up; fills the pipe and the queue
            base, slow = ttfts_side_by_side(normal, blocked, 100)
            ratio = slow / base
            print(
                f"\nTTFT median: normal sink {base * 1000:.2f} ms, blocking sink "
                f"{slow * 1000:.2f} ms, ratio {ratio:.2f}"
            )
            assert ratio < 1.5
            assert metric(blocked, "gateway_log_records_dropped_total") > 0
            assert metric(blocked, "gateway_log_queue_depth") >= 40
    finally:
        os.close(reader)


def test_sigterm_after_n_requests_leaves_n_records(upstream: FakeUpstream, tmp_path: Path) -> None:
    log = tmp_path / "requests.log"
    gw = GatewayProcess(test_config(upstream.url, logging={"file": str(log)}), tmp_path).start()
    n = 25
    for i in range(n):
        assert stream(gw, "gpt-test" if i % 5 else "gpt-midstream") == 200
    assert gw.stop() == 0
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(records) == n
    assert {r["outcome"] for r in records} == {"completed", "upstream_error"}
    for record in records:
        assert record["request_id"] and record["key_id"] == "team-a"
        # The upstream's usage when it finished; the gateway's estimate when it broke off.
        assert record["prompt_tokens"] == (11 if record["outcome"] == "completed" else 4)
        assert record["usage_reported"] == (record["outcome"] == "completed")
        assert "authorization" not in json.dumps(record).lower()
