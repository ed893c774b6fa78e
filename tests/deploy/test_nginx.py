"""The shipped nginx config (nginx/), run for real in front of two real gateway replicas.

What a deployment relies on: tokens pass nginx at the provider's pace (no buffering), the
replicas share the load, a client that leaves still cancels the provider's request, request
ids and forwarding headers reach the gateway, and a replica that is shutting down costs no
request (its 503 is retried on the other replica).
"""

from __future__ import annotations

import re
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.deploy.deploy_support import (
    LONG_MODEL,
    MESSAGES,
    NginxProcess,
    background_stream,
    pace_summary,
    stream_chat,
    wait_until,
)
from tests.support.fake_upstream import FakeUpstream, Seen, text_tokens
from tests.support.gateway_proc import KEY_A, GatewayProcess, free_port, test_config

pytestmark = pytest.mark.nginx

AUTH = {"authorization": f"Bearer {KEY_A}"}


def replica_config(upstream: FakeUpstream, **overrides: object) -> dict[str, object]:
    config = test_config(upstream.url, **overrides)
    config["models"] = [*config["models"], LONG_MODEL]
    return config


def address(gateway: GatewayProcess) -> str:
    return f"127.0.0.1:{gateway.port}"


@pytest.fixture(scope="module")
def replicas(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[GatewayProcess]]:
    tmp = tmp_path_factory.mktemp("replicas")
    gateways = [GatewayProcess(replica_config(upstream), tmp) for _ in range(2)]
    try:
        for gateway in gateways:
            gateway.start()
        yield gateways
    finally:
        for gateway in gateways:
            gateway.stop()


@pytest.fixture(scope="module")
def proxy(
    replicas: list[GatewayProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NginxProcess]:
    prefix = tmp_path_factory.mktemp("nginx")
    with NginxProcess(prefix, [address(g) for g in replicas]) as nginx:
        yield nginx


def chat(base_url: str, model: str = "gpt-test", **headers: str) -> httpx.Response:
    return httpx.post(
        base_url + "/v1/chat/completions",
        headers={**AUTH, **headers},
        json={"model": model, "messages": MESSAGES},
        timeout=10,
    )


def logged_ids(gateway: GatewayProcess) -> set[str]:
    """Request ids in the gateway's request log (JSON lines on its stdout)."""
    ids = set()
    for line in gateway.output().splitlines():
        if line.startswith("{") and '"request_id"' in line:
            ids.add(orjson.loads(line)["request_id"])
    return ids


def test_tokens_pass_nginx_at_the_providers_pace(
    proxy: NginxProcess, replicas: list[GatewayProcess]
) -> None:
    # gpt-paced: 40 tokens 50 ms apart. Direct first, for the comparison in the output.
    direct = stream_chat(replicas[0].url, "gpt-paced")
    via_nginx = stream_chat(proxy.url, "gpt-paced")
    for stream in (direct, via_nginx):
        assert stream.status == 200
        assert stream.tokens() == "".join(text_tokens(40))
        assert stream.data[-1] == "[DONE]"
    pace_summary("direct to a replica", direct.data_times)
    paced = pace_summary("through nginx", via_nginx.data_times)
    assert via_nginx.headers["content-type"].startswith("text/event-stream")
    assert 30 <= paced["median_ms"] <= 120, "events through nginx do not keep the 50 ms pace"
    assert paced["spread_s"] > 1.2, "the stream arrived through nginx in a burst"


def test_requests_spread_over_both_replicas(
    proxy: NginxProcess, replicas: list[GatewayProcess]
) -> None:
    ids = [f"spread-{uuid.uuid4().hex[:8]}-{i}" for i in range(8)]
    with httpx.Client(timeout=10) as client:
        for rid in ids:
            response = client.post(
                proxy.url + "/v1/chat/completions",
                headers={**AUTH, "x-request-id": rid},
                json={"model": "gpt-test", "messages": MESSAGES},
            )
            assert response.status_code == 200
            assert response.headers["x-request-id"] == rid

    def served() -> list[int]:
        return [len(logged_ids(g) & set(ids)) for g in replicas]

    assert wait_until(lambda: sum(served()) == len(ids)), served()
    print(f"8 requests through nginx, served per replica: {served()}")
    assert all(count >= 1 for count in served()), served()


def test_nginx_request_id_reaches_the_gateway_and_both_logs(
    proxy: NginxProcess, replicas: list[GatewayProcess]
) -> None:
    response = chat(proxy.url)
    assert response.status_code == 200
    rid = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid), "nginx's $request_id was not passed on"
    assert wait_until(lambda: any(rid in logged_ids(g) for g in replicas))
    assert wait_until(lambda: f'"request_id":"{rid}"' in proxy.access_log())


def test_forwarding_headers_reach_the_replica(upstream: FakeUpstream, tmp_path: Path) -> None:
    # The fake provider as the only "replica": it records the headers nginx sends.
    with NginxProcess(tmp_path / "nginx", [f"127.0.0.1:{upstream.port}"]) as nginx:
        before = len(upstream.seen)
        response = httpx.post(
            nginx.url + "/v1/chat/completions",
            headers={"x-request-id": "hdr-check-1", "x-forwarded-for": "203.0.113.7"},
            json={"model": "text?n=3", "messages": MESSAGES},
            timeout=10,
        )
        assert response.status_code == 200
        seen = upstream.seen[before].headers
    assert seen["x-request-id"] == "hdr-check-1"
    assert seen["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert seen["x-real-ip"] == "127.0.0.1"
    assert "connection" not in seen, "nginx must keep connections to the replicas alive"


def test_nginx_refuses_only_bodies_over_8_mib_and_answers_in_openais_shape(
    proxy: NginxProcess, tmp_path: Path, replicas: list[GatewayProcess]
) -> None:
    too_large = httpx.post(
        proxy.url + "/v1/chat/completions",
        headers={**AUTH, "content-type": "application/json"},
        content=b" " * (8 * 1024 * 1024 + 1),
        timeout=10,
    )
    assert too_large.status_code == 413
    assert too_large.json()["error"]["code"] == "request_too_large"
    # Just under nginx's limit reaches the gateway (which answers for the body, not nginx).
    body = b'{"model": "gpt-test", "messages": []}'
    passed = httpx.post(
        proxy.url + "/v1/chat/completions",
        headers={**AUTH, "content-type": "application/json"},
        content=body + b" " * (8 * 1024 * 1024 - len(body)),
        timeout=10,
    )
    assert passed.status_code == 400
    assert passed.headers["server"] == "nginx" and "x-request-id" in passed.headers

    with NginxProcess(tmp_path / "nginx", [f"127.0.0.1:{free_port()}"]) as nowhere:
        unreachable = chat(nowhere.url)
    assert unreachable.status_code == 502
    assert unreachable.json()["error"]["type"] == "api_error"


def test_client_disconnect_through_nginx_cancels_the_upstream_request(
    proxy: NginxProcess, upstream: FakeUpstream
) -> None:
    before = len(upstream.seen)
    stream = stream_chat(proxy.url, "gpt-long", stop_after=4)  # then the client goes away
    assert stream.status == 200
    assert stream.closed_at is not None
    wanted = LONG_MODEL["upstream_model"]

    def upstream_request() -> Seen | None:
        return next((s for s in upstream.seen[before:] if s.body.get("model") == wanted), None)

    assert upstream.wait_for(lambda: getattr(upstream_request(), "ended", None) is not None, 3)
    seen = upstream_request()
    assert seen is not None and seen.ended is not None
    assert seen.disconnected, "the provider's stream ran on after the client left"
    delay = seen.ended - stream.closed_at
    print(f"client closed through nginx -> provider saw the disconnect {delay * 1000:.0f} ms later")
    assert delay < 1.0


def test_a_draining_replica_costs_no_request(upstream: FakeUpstream, tmp_path: Path) -> None:
    config = replica_config(upstream, shutdown_grace=10)
    draining, other = GatewayProcess(config, tmp_path), GatewayProcess(config, tmp_path)
    try:
        draining.start()
        other.start()
        with NginxProcess(tmp_path / "nginx", [address(draining), address(other)]) as nginx:
            # An open stream keeps the draining replica up (answering 503) for a while.
            with background_stream(draining.url, "gpt-long", stop_after=60):
                draining.signal(signal.SIGTERM)
                assert wait_until(lambda: httpx.get(draining.url + "/readyz").status_code == 503, 3)
                responses = [chat(nginx.url, **{"x-request-id": f"drain-{i}"}) for i in range(6)]
                streamed = stream_chat(nginx.url, "gpt-test")
            assert [r.status_code for r in responses] == [200] * 6
            assert streamed.status == 200 and streamed.data[-1] == "[DONE]"
            retried = nginx.access_log().count('"upstream_status":"503, 200"')
            print(f"draining replica: {retried} of 7 requests answered 503 and retried by nginx")
            assert retried >= 1, "no request reached the draining replica; nothing was tested"
        assert draining.proc is not None
        assert draining.proc.wait(15) == 0
    finally:
        draining.stop()
        other.stop()
