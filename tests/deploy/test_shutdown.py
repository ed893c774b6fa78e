"""SIGTERM, as a rolling deploy sends it: open streams finish, new work goes elsewhere, exit 0.

The real `gateway serve` in a subprocess. After SIGTERM the gateway answers `/readyz` and
new API requests with 503 (load balancers move on), lets open streams run for up to
`shutdown_grace` seconds, ends the rest with an SSE error event (never a clean `[DONE]`),
and exits 0. Each test prints its timeline, seconds after the signal.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import orjson

from tests.deploy.deploy_support import (
    LONG_MODEL,
    MESSAGES,
    TimedStream,
    background_stream,
    wait_until,
)
from tests.support.fake_upstream import FakeUpstream, text_tokens
from tests.support.gateway_proc import KEY_A, GatewayProcess, test_config


def status(url: str) -> int:
    try:
        return httpx.get(url + "/readyz", timeout=1).status_code
    except httpx.HTTPError:
        return 0


def wait_exit(gateway: GatewayProcess, timeout: float) -> tuple[int, float]:
    assert gateway.proc is not None
    code = gateway.proc.wait(timeout)
    return code, time.monotonic()


def print_timeline(title: str, sigterm: float, **moments: float | None) -> None:
    parts = [f"{name.replace('_', ' ')} +{t - sigterm:.2f} s" for name, t in moments.items() if t]
    print(f"{title}: SIGTERM +0.00 s, " + ", ".join(parts))


def stream_end(stream: TimedStream) -> float:
    return stream.events[-1][0]


def test_sigterm_lets_an_open_stream_finish_and_refuses_new_work(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    gateway = GatewayProcess(test_config(upstream.url, shutdown_grace=10), tmp_path).start()
    try:
        with background_stream(gateway.url, "gpt-paced") as stream:  # 40 tokens, 2 s
            gateway.signal(signal.SIGTERM)
            sigterm = time.monotonic()
            assert wait_until(lambda: status(gateway.url) == 503, 2, interval=0.01)
            not_ready = time.monotonic()
            refused = httpx.post(
                gateway.url + "/v1/chat/completions",
                headers={"authorization": f"Bearer {KEY_A}"},
                json={"model": "gpt-test", "messages": MESSAGES},
                timeout=5,
            )
            refused_at = time.monotonic()
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "service_unavailable"
        assert refused.headers["connection"] == "close"
        assert refused.headers["retry-after"] == "1"

        assert stream.status == 200
        assert stream.tokens() == "".join(text_tokens(40))
        assert stream.data[-1] == "[DONE]"
        assert not any('"error"' in d for d in stream.data)
        ended = stream_end(stream)
        assert ended > not_ready, "the stream should still have been open while draining"

        code, exited = wait_exit(gateway, 15)
        print_timeline(
            "shutdown, grace 10 s, 2 s stream",
            sigterm,
            readyz_503=not_ready,
            new_request_503=refused_at,
            stream_done=ended,
            process_exit=exited,
        )
        assert code == 0
        assert ended - sigterm < 10, "the stream did not finish within the grace period"
        assert exited - sigterm < 10
    finally:
        gateway.stop()


def test_a_stream_longer_than_the_grace_period_gets_a_shutdown_error(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    config = test_config(upstream.url, shutdown_grace=1)
    config["models"].append(LONG_MODEL)  # 200 tokens 50 ms apart: 10 s
    gateway = GatewayProcess(config, tmp_path).start()
    try:
        with background_stream(gateway.url, "gpt-long") as stream:
            gateway.signal(signal.SIGTERM)
            sigterm = time.monotonic()
            assert wait_until(lambda: status(gateway.url) == 503, 2, interval=0.01)
            not_ready = time.monotonic()
        ended = stream_end(stream)
        code, exited = wait_exit(gateway, 15)
        print_timeline(
            "shutdown, grace 1 s, 10 s stream",
            sigterm,
            readyz_503=not_ready,
            stream_error_event=ended,
            process_exit=exited,
        )
        assert stream.status == 200
        assert "[DONE]" not in stream.data
        error = orjson.loads(stream.data[-1])["error"]
        assert error["code"] == "shutdown"
        assert 0 < len(stream.tokens().split()) < 200
        assert 1.0 <= ended - sigterm < 3.0, "the stream should end when the grace ran out"
        assert code == 0
        assert exited - sigterm < 6
    finally:
        gateway.stop()


def test_sigterm_with_two_workers_drains_and_exits_zero(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    gateway = GatewayProcess(
        test_config(upstream.url, shutdown_grace=10), tmp_path, workers=2
    ).start()
    try:
        with background_stream(gateway.url, "gpt-paced") as stream:
            gateway.signal(signal.SIGTERM)
            sigterm = time.monotonic()
            assert wait_until(lambda: status(gateway.url) == 503, 2, interval=0.01)
        code, exited = wait_exit(gateway, 15)
        print_timeline(
            "shutdown, 2 workers", sigterm, stream_done=stream_end(stream), process_exit=exited
        )
        assert stream.tokens() == "".join(text_tokens(40))
        assert stream.data[-1] == "[DONE]"
        assert code == 0
        assert gateway.output().count("draining") == 2, gateway.output()
    finally:
        gateway.stop()
