"""Several deployments of one model, each a fake upstream in a process of its own, behind the
real `gateway serve`: weights, a killed upstream, a 429's retry-after, least_busy and latency.

Each fake says what it saw (`GET /_seen`: every request's start and end as unix times), so
"no traffic during the cooldown" and "one probe" are read from the upstreams' side.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.observability.obs_support import value
from tests.support.gateway_proc import KEY_A, GatewayProcess, test_config
from tests.support.upstream_proc import UpstreamProcess

CHAT = "/v1/chat/completions"
AUTH = {"authorization": f"Bearer {KEY_A}"}


Upstream = UpstreamProcess


@pytest.fixture
def upstreams() -> Iterator[list[Upstream]]:
    made: list[Upstream] = []
    yield made
    for upstream in made:
        upstream.stop()


def start_upstreams(made: list[Upstream], *args: tuple[str, ...]) -> list[Upstream]:
    for a in args:
        made.append(Upstream(*a).start())
    return made


def gateway_config(
    ups: list[Upstream], models: list[str], routing: str, weights: list[int], **extra: Any
) -> dict[str, Any]:
    providers = [
        {"name": f"up{i}", "type": "openai", "base_url": u.url + "/v1", "max_retries": 0}
        for i, u in enumerate(ups)
    ]
    deployments = [
        {"provider": f"up{i}", "upstream_model": m, "weight": w, "name": f"d{i}"}
        for i, (m, w) in enumerate(zip(models, weights, strict=True))
    ]
    config = test_config(ups[0].url)
    config["providers"] = providers
    config["models"] = [{"name": "routed", "deployments": deployments, "routing": routing}]
    config["keys"] = [k for k in config["keys"] if "models" not in k]
    config.update(extra)
    return config


def ask(client: httpx.Client, url: str) -> int:
    body = {"model": "routed", "messages": [{"role": "user", "content": "hi"}]}
    return client.post(url + CHAT, headers=AUTH, json=body).status_code


def keep_asking(url: str, until: float, threads: int) -> list[int]:
    """Requests from `threads` clients, one after another each, until `until`."""
    statuses: list[int] = []

    def run() -> None:
        with httpx.Client(timeout=10) as client:
            while time.time() < until:
                statuses.append(ask(client, url))

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return statuses


def healthy(url: str, deployment: str) -> float | None:
    body = httpx.get(url + "/metrics", timeout=5).content
    return value(body, "gateway_deployment_healthy", deployment=deployment)


def test_weights_hold_over_hundreds_of_requests(upstreams: list[Upstream], tmp_path: Path) -> None:
    ups = start_upstreams(upstreams, (), ())
    config = gateway_config(ups, ["text?n=2", "text?n=2"], "weighted", [3, 1])
    with GatewayProcess(config, tmp_path) as gw, httpx.Client(timeout=10) as client:
        statuses = [ask(client, gw.url) for _ in range(400)]
        metrics = httpx.get(gw.url + "/metrics").content
    assert statuses == [200] * 400
    a, b = (len(u.seen()) for u in ups)
    assert a + b == 400
    assert abs(a / 400 - 0.75) <= 0.03, (a, b)
    assert value(metrics, "gateway_deployment_requests_total", deployment="d0", outcome="ok") == a


def test_a_killed_upstream_costs_no_request_is_cooled_then_probed_once(
    upstreams: list[Upstream], tmp_path: Path
) -> None:
    cooldown = 2.0
    # d0 answers in 300 ms: its probe is in flight long enough for others to try to join it.
    ups = start_upstreams(upstreams, (), ())
    config = gateway_config(
        ups,
        ["text?n=2&ttft_ms=300", "text?n=2"],
        "weighted",
        [1, 1],
        health={"failures": 2, "window": 10, "cooldown": cooldown},
    )
    with GatewayProcess(config, tmp_path) as gw, httpx.Client(timeout=10) as client:
        assert [ask(client, gw.url) for _ in range(4)] == [200] * 4
        assert len(ups[0].seen()) == 2
        ups[0].kill()
        statuses = []
        cooled_after = 0.0
        for _ in range(20):
            cooled_after = time.time()
            statuses.append(ask(client, gw.url))
            if healthy(gw.url, "d0") == 0:
                break
        assert healthy(gw.url, "d0") == 0
        assert statuses == [200] * len(statuses)  # the dead upstream cost no client request
        ups[0].start()  # back, on the same port, knowing nothing of before
        statuses = keep_asking(gw.url, time.time() + cooldown + 2.5, threads=4)
        output = gw.output()
    assert statuses == [200] * len(statuses)
    seen = sorted(ups[0].seen(), key=lambda s: s["started"])
    # Nothing during the cooldown (it began after the request that cooled it had started).
    assert seen and seen[0]["started"] >= cooled_after + cooldown - 0.05, seen[:2]
    # One probe: no other request reached it before the probe's answer was done.
    assert len(seen) > 3 and seen[1]["started"] >= seen[0]["ended"] - 0.01, seen[:2]
    assert '"deployment": "d1"' in output or '"deployment":"d1"' in output


def test_a_429_with_retry_after_is_honoured(upstreams: list[Upstream], tmp_path: Path) -> None:
    ups = start_upstreams(upstreams, ("--fail-next", "1", "--retry-after", "2"), ())
    config = gateway_config(
        ups,
        ["text?n=2", "text?n=2"],
        "weighted",
        [1, 1],
        health={"failures": 100, "window": 10, "cooldown": 0.5},
    )
    with GatewayProcess(config, tmp_path) as gw, httpx.Client(timeout=10) as client:
        assert ask(client, gw.url) == 200  # d0's 429 failed over to d1
        statuses = keep_asking(gw.url, time.time() + 3.0, threads=2)
        metrics = httpx.get(gw.url + "/metrics").content
    assert statuses == [200] * len(statuses)
    seen = sorted(ups[0].seen(), key=lambda s: s["started"])
    assert len(seen) > 2
    assert seen[1]["started"] - seen[0]["started"] >= 2.0 - 0.05, seen[:2]
    limited = value(
        metrics, "gateway_deployment_requests_total", deployment="d0", outcome="rate_limited"
    )
    assert limited == 1


def test_least_busy_balances_open_streams_whatever_the_weights(
    upstreams: list[Upstream], tmp_path: Path
) -> None:
    ups = start_upstreams(upstreams, (), ())
    slow = "text?n=30&pace_ms=100"
    config = gateway_config(ups, [slow, slow], "least_busy", [5, 1])
    body = {"model": "routed", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with GatewayProcess(config, tmp_path) as gw, httpx.Client(timeout=10) as client:
        streams = []
        readers: list[Iterator[str]] = []
        try:
            for _ in range(8):
                stream = client.stream("POST", gw.url + CHAT, headers=AUTH, json=body)
                response = stream.__enter__()
                streams.append(stream)
                assert response.status_code == 200
                lines = response.iter_lines()  # kept: a dropped iterator closes the stream
                readers.append(lines)
                next(lines)  # in flight: its first event arrived
            open_now = [sum(1 for s in u.seen() if s["ended"] is None) for u in ups]
        finally:
            for stream in streams:
                stream.__exit__(None, None, None)
    assert open_now == [4, 4]


def test_latency_prefers_the_faster_deployment(upstreams: list[Upstream], tmp_path: Path) -> None:
    ups = start_upstreams(upstreams, (), ())
    config = gateway_config(ups, ["text?n=2&ttft_ms=60", "text?n=2"], "latency", [1, 1])
    with GatewayProcess(config, tmp_path) as gw, httpx.Client(timeout=10) as client:
        assert [ask(client, gw.url) for _ in range(30)] == [200] * 30
    slow, fast = (len(u.seen()) for u in ups)
    # Its first request measures the slow one; a stall of this box may cost one or two more
    # (weighted would have sent it 15).
    assert slow <= 4 and fast >= 26, (slow, fast)
