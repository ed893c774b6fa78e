"""The raw floor (bench/rawfloor.py) relays streams intact, with and without its rungs: a
reference that dropped or mangled bytes, or skipped the admission it claims to make, would
make the ladder's figures lie."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.procs import (
    Service,
    free_port,
    gateway_config,
    python_service,
    redis_command,
    redis_service,
)
from bench.rawfloor import RUNGS
from bench.run import Target, run_client
from tests.support.bench_services import bench_upstream, small_scale


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Service]:
    with bench_upstream(tmp_path) as service:
        yield service


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Service]:
    service = redis_service(tmp_path)
    try:
        yield service.start()
    finally:
        service.stop()


def _post(port: int, key: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        body = b'{"model":"bench-n5-p20","stream":true,"messages":[{"role":"user","content":"hi"}]}'
        headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
        conn.request("POST", "/v1/chat/completions", body, headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("rungs", [0, len(RUNGS)])
def test_the_raw_floor_relays_streams_intact(
    rungs: int, upstream: Service, redis: Service, tmp_path: Path
) -> None:
    port = free_port()
    argv = ["--port", str(port), "--upstream", upstream.url]
    if rungs:
        redis_url = f"redis://127.0.0.1:{redis.port}/0"
        config = gateway_config(tmp_path, "raw", upstream.url, redis_url, ["bench-n5-p20"])
        argv += ["--rungs", ",".join(RUNGS[:rungs]), "--config", str(config)]
    raw = python_service("rawfloor", "bench.rawfloor", argv, tmp_path, port).start()
    try:
        scenario = small_scale(procs=1)
        result = run_client(
            Target("raw", "raw", raw, raw.url), scenario, upstream, [raw], tmp_path, 60
        )
        refused = _post(port, "sk-not-a-key")[0] if rungs else None
    finally:
        raw.stop()
    client = result.client
    assert (client["ok"], client["errors"], client["integrity"]) == (41, 0, 0), client["samples"]
    assert result.events == 41 * 8  # 5 chunks, the finish, usage and [DONE] of each stream
    if rungs:
        assert refused == 400  # the key is checked
        # Each stream was admitted and settled in Redis: the key's request counter exists.
        keys = redis_command(redis.port, "KEYS", "*")
        assert b"bench" in keys, keys
