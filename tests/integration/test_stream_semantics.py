"""SPEC section 5 through the real server: disconnects, timeouts, keep-alive, one outcome."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway_proc import KEY_A, GatewayProcess, test_config

AUTH = {"authorization": f"Bearer {KEY_A}"}


def body(model: str, **extra: object) -> dict[str, object]:
    return {
        "model": model,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
        **extra,
    }


def metric(gateway: GatewayProcess, name: str, **labels: str) -> float:
    text = gateway.probe.get("/metrics").text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def last_request(upstream: FakeUpstream, marker: str):  # type: ignore[no-untyped-def]
    return next(s for s in reversed(upstream.seen) if marker in str(s.body.get("model")))


def test_client_disconnect_cancels_the_upstream_within_a_second(
    gateway: GatewayProcess, upstream: FakeUpstream
) -> None:
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "POST", gateway.url + "/v1/chat/completions", headers=AUTH, json=body("gpt-paced")
        ) as response,
    ):
        assert response.status_code == 200
        events = 0
        for line in response.iter_lines():
            if line.startswith("data: "):
                events += 1
            if events == 3:
                break
        seen = last_request(upstream, "pace_ms=50")
        closed_at = time.monotonic()
    # Leaving the `with` closed the connection mid-stream.
    assert upstream.wait_for(lambda: seen.ended is not None, timeout=2)
    assert seen.disconnected
    assert seen.ended is not None and seen.ended - closed_at < 1.0
    assert seen.chunks_sent < 40
    assert upstream.wait_for(lambda: metric(gateway, "gateway_active_streams") == 0, timeout=2)
    assert upstream.wait_for(
        lambda: metric(gateway, "gateway_requests_total", outcome="client_cancelled") >= 1
    )


@pytest.fixture(scope="module")
def strict_gateway(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """A gateway with short timeouts, to meet them in a test's time."""
    config = test_config(
        upstream.url,
        timeouts={"connect": 1, "first_token": 1, "idle": 1.5, "keepalive": 0.4, "total": 30},
    )
    config["providers"][0]["max_retries"] = 0
    with GatewayProcess(config, tmp_path_factory.mktemp("strict")) as proc:
        yield proc


def test_first_token_timeout_is_a_status_before_the_first_byte(
    strict_gateway: GatewayProcess,
) -> None:
    started = time.monotonic()
    r = httpx.post(
        strict_gateway.url + "/v1/chat/completions",
        headers=AUTH,
        json=body("gpt-slow-first"),
        timeout=10,
    )
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - started < 3


def test_idle_timeout_after_the_first_byte_is_an_error_event_with_keepalives_before(
    strict_gateway: GatewayProcess,
) -> None:
    lines: list[str] = []
    with httpx.stream(
        "POST",
        strict_gateway.url + "/v1/chat/completions",
        headers=AUTH,
        json=body("gpt-stall"),
        timeout=10,
    ) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    data = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert "data: [DONE]" not in lines
    assert data[-1]["error"]["code"] == "idle_timeout"
    assert sum(1 for line in lines if line == ": keep-alive") >= 2
    tokens = [
        d
        for d in data
        if "choices" in d and d["choices"] and d["choices"][0]["delta"].get("content")
    ]
    assert len(tokens) == 3


def test_every_stream_ends_in_exactly_one_outcome(gateway: GatewayProcess) -> None:
    before = metric(gateway, "gateway_requests_total")
    for model in ("gpt-test", "gpt-midstream", "gpt-truncate"):
        with httpx.stream(
            "POST", gateway.url + "/v1/chat/completions", headers=AUTH, json=body(model)
        ) as response:
            text = response.read().decode()
        done = text.count("data: [DONE]")
        errors = len(re.findall(r'^data: \{"error"', text, re.M))
        assert done + errors == 1, (model, text[-300:])
        assert (done == 1) == (model == "gpt-test")
    assert metric(gateway, "gateway_requests_total") - before == 3


def test_request_ids_are_echoed_and_unsafe_ones_replaced(gateway: GatewayProcess) -> None:
    r = httpx.get(gateway.url + "/v1/models", headers={**AUTH, "x-request-id": "abc-123"})
    assert r.status_code == 200
    r = httpx.post(
        gateway.url + "/v1/chat/completions",
        headers={**AUTH, "x-request-id": "abc-123"},
        json=body("gpt-test", stream=False),
    )
    assert r.headers["x-request-id"] == "abc-123"
    r = httpx.post(
        gateway.url + "/v1/chat/completions",
        headers={**AUTH, "x-request-id": "a b\tc" * 40},
        json=body("gpt-test", stream=False),
    )
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])


def test_streaming_headers(gateway: GatewayProcess) -> None:
    with httpx.stream(
        "POST", gateway.url + "/v1/chat/completions", headers=AUTH, json=body("gpt-test")
    ) as response:
        response.read()
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"


def test_unknown_routes_and_methods_are_openai_shaped(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    r = httpx.get(gateway.url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["message"]
    r = httpx.get(gateway.url + "/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["message"]


def test_a_body_that_stalls_gets_a_408(strict_gateway: GatewayProcess) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", strict_gateway.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            + f"authorization: Bearer {KEY_A}\r\ncontent-length: 500\r\n\r\n".encode()
            + b'{"model": "gpt-test",'
        )
        started = time.monotonic()
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408")
    assert b'"request_timeout"' in answer
    assert time.monotonic() - started < 5
