"""The process around the app, through the real `gateway serve --workers 2`: a killed worker's
streams leave the metrics, and its logs keep to their pipelines (stdout: the request log
alone; stderr: every process log line, JSON when not a terminal)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx

from tests.integration.test_stream_semantics import metric
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway_proc import KEY_A, GatewayProcess, free_port, test_config

AUTH = {"authorization": f"Bearer {KEY_A}"}


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def health(gateway: GatewayProcess) -> dict[str, Any] | None:
    """/healthz on a new connection (so any worker may answer), None when none answers."""
    try:
        response = gateway.probe.get("/healthz", timeout=2)
    except httpx.HTTPError:
        return None
    return dict(response.json()) if response.status_code == 200 else None


def worker_with_open_request(gateway: GatewayProcess) -> int:
    """The pid of a worker holding an open request (asked until that worker answers)."""
    found: list[int] = []

    def ask() -> bool:
        answer = health(gateway)
        if answer is not None and answer["open_requests"] >= 1:
            found.append(answer["pid"])
        return bool(found)

    assert wait_until(ask), "no worker reported the open stream"
    return found[0]


def live_pids(gateway: GatewayProcess, tries: int = 40) -> set[int]:
    pids = set()
    for _ in range(tries):
        answer = health(gateway)
        if answer is not None:
            pids.add(answer["pid"])
    return pids


@contextmanager
def open_stream(gateway: GatewayProcess, model: str) -> Iterator[httpx.Response]:
    """A stream whose first event has arrived; dropped on exit (the worker may be dead)."""
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(timeout=30) as client:
        request = client.build_request(
            "POST", gateway.url + "/v1/chat/completions", headers=AUTH, json=body
        )
        response = client.send(request, stream=True)
        try:
            assert response.status_code == 200
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))
            yield response
        finally:
            with suppress(httpx.HTTPError):
                response.close()


def config_with_long_stream(upstream: FakeUpstream, **extra: Any) -> dict[str, Any]:
    config = test_config(upstream.url, **extra)
    # 2,400 tokens 50 ms apart (2 minutes): open for far longer than the test needs, even
    # when a worker's start-up takes 20 s.
    config["models"].append(
        {"name": "gpt-long", "provider": "fake", "upstream_model": "text?n=2400&pace_ms=50"}
    )
    return config


def test_a_killed_workers_streams_leave_the_active_streams_gauge(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")}
    with GatewayProcess(config_with_long_stream(upstream), tmp_path, workers=2, env=env) as gw:
        with open_stream(gw, "gpt-long"):
            assert metric(gw, "gateway_active_streams") == 1
            victim = worker_with_open_request(gw)
            os.kill(victim, signal.SIGKILL)
            # The supervisor notices within its 0.5 s tick and starts a replacement, which
            # imports the gateway (~2 s of CPU: on a busy 2-core box, 10-20 s to answer).
            replaced = wait_until(lambda: len(live_pids(gw, tries=10) - {victim}) == 2, 60)
            assert replaced, gw.output()
        active = metric(gw, "gateway_active_streams")
        assert active == 0, f"gateway_active_streams stayed {active} after the worker died"
        assert "restarting" in gw.output()


def json_lines(text: str, stream: str) -> list[dict[str, Any]]:
    parsed = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            raise AssertionError(f"a {stream} line is not JSON: {line!r}") from None
        assert isinstance(value, dict), f"a {stream} line is not a JSON object: {line!r}"
        parsed.append(value)
    return parsed


def test_stdout_is_the_request_log_alone_and_every_stderr_line_is_json(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    # An unreachable limits backend (failing open) makes every worker log at start-up and
    # on requests; uvicorn's info lines are on; a killed worker makes the supervisor log;
    # SIGTERM makes each worker log its draining.
    config = config_with_long_stream(upstream, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
        "GATEWAY_UVICORN_LOG_LEVEL": "info",
    }
    gw = GatewayProcess(config, tmp_path, workers=2, env=env, split_stderr=True).start()
    try:
        for model in ("gpt-test", "gpt-500", "gpt-midstream"):
            httpx.post(
                gw.url + "/v1/chat/completions",
                headers=AUTH,
                json={
                    "model": model,
                    "stream": True,
                    "messages": [{"role": "user", "content": "x"}],
                },
                timeout=30,
            )
        # The three lines must be written before a worker is killed: a SIGKILLed worker's
        # unwritten log lines die with it (what the supervisor's restart cannot save).
        assert wait_until(lambda: gw.output().count('"request_id"') >= 3)
        with open_stream(gw, "gpt-long"):
            victim = worker_with_open_request(gw)
            os.kill(victim, signal.SIGKILL)
            assert wait_until(lambda: len(live_pids(gw, tries=10) - {victim}) == 2, 60)
        assert gw.stop() == 0
    finally:
        gw.stop()

    stdout = json_lines(gw.output(), "stdout")
    stderr = json_lines(gw.errors(), "stderr")
    print(gw.errors())
    assert len(stdout) >= 3
    assert all(line["event"] == "request" and "request_id" in line for line in stdout)
    assert {line["model"] for line in stdout} >= {"gpt-test", "gpt-500", "gpt-midstream"}
    events = [line["event"] for line in stderr]
    assert all({"event", "level", "timestamp"} <= line.keys() for line in stderr)
    assert events[0] == "listening", events
    # From the workers (the gateway's loggers and uvicorn's) and from the supervisor.
    loggers = {line.get("logger") for line in stderr}
    assert {"gateway.cli", "gateway.server", "gateway.limits.redis_store", "uvicorn.error"} <= (
        loggers
    ), loggers
    assert any("limits backend unreachable" in event for event in events), events
    assert any("restarting" in event for event in events), events
    assert sum("draining" in event for event in events) >= 2, events
