"""The upstream connection pool through the real server (`upstream_pool:`): the fake upstream
sits behind a TCP relay that counts the connections the gateway opens to it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway_proc import KEY_A, GatewayProcess, test_config
from tests.support.tcp_relay import TcpRelay

AUTH = {"authorization": f"Bearer {KEY_A}"}
BODY = {"model": "gpt-test", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def relay(upstream: FakeUpstream) -> Iterator[TcpRelay]:
    relay = TcpRelay("127.0.0.1", upstream.port)
    relay.start()
    yield relay
    relay.stop()


def streams(gateway: GatewayProcess, count: int, *, at_once: bool = False) -> None:
    """`count` chat streams read to their end: one after the other, or (`at_once`) all open
    together upstream (each lasts ~2 s: opened well within that, even on a busy box) before
    any is read."""
    body = {**BODY, "model": "gpt-held"} if at_once else BODY
    client = httpx.Client(base_url=gateway.url, headers=AUTH, timeout=10)
    with client, contextlib.ExitStack() as opened:
        responses = []
        for _ in range(count):
            response = opened.enter_context(
                client.stream("POST", "/v1/chat/completions", json=body)
            )
            assert response.status_code == 200
            responses.append(response)
            if not at_once:
                assert response.read().endswith(b"data: [DONE]\n\n")
        for response in responses:
            assert response.read().endswith(b"data: [DONE]\n\n")


def served(relay: TcpRelay, tmp: Path, pool: dict[str, Any] | None) -> GatewayProcess:
    config = test_config(f"http://127.0.0.1:{relay.port}")
    config["models"].append(
        {"name": "gpt-held", "provider": "fake", "upstream_model": "text?n=40&pace_ms=50"}
    )
    if pool is not None:
        config["upstream_pool"] = pool
    return GatewayProcess(config, tmp)


def test_requests_one_after_another_share_one_upstream_connection(
    relay: TcpRelay, tmp: Path
) -> None:
    with served(relay, tmp, None) as gateway:
        streams(gateway, 5)
    assert relay.accepted == 1


def test_max_idle_0_connects_for_every_request(relay: TcpRelay, tmp: Path) -> None:
    with served(relay, tmp, {"max_idle": 0}) as gateway:
        streams(gateway, 4)
    assert relay.accepted == 4


def test_at_most_max_idle_connections_outlive_a_burst(relay: TcpRelay, tmp: Path) -> None:
    with served(relay, tmp, {"max_idle": 2}) as gateway:
        streams(gateway, 5, at_once=True)  # five connections open at once
        assert relay.accepted == 5
        streams(gateway, 5, at_once=True)  # two of them kept, three more opened
        assert relay.accepted == 8


def test_an_idle_connection_is_closed_after_idle_timeout(relay: TcpRelay, tmp: Path) -> None:
    # 1.5 s: two streams one after the other reuse the connection even on a busy box.
    with served(relay, tmp, {"idle_timeout": 1.5}) as gateway:
        streams(gateway, 2)
        assert relay.accepted == 1
        time.sleep(2.0)
        streams(gateway, 1)
        assert relay.accepted == 2
