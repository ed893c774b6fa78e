"""Checks every hostile-input test makes: OpenAI's error shape, nothing leaked, still up."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import orjson

from tests.support.gateway_proc import ADMIN_KEY, KEY_A, KEY_B, GatewayProcess

SECRETS = (
    "sk-upstream-secret-value",
    "sk-ant-upstream-secret-value",
    KEY_A,
    KEY_B,
    ADMIN_KEY,
)
"""The upstream api_keys of `test_config` and every client key: never in a response or log."""

# A Python traceback, or an exception named by its module path (aiohttp.client_exceptions.X).
PYTHON_INTERNALS = re.compile(
    rb"Traceback \(most recent call last\)|\b[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*\.[A-Z]\w*(?:Error|Exception)\b"
)


def error_of(body: bytes, *, relayed: bool = False) -> dict[str, Any]:
    """The `error` object of an OpenAI-shaped error body; fails the test on any other body.

    `relayed`: a provider's own 4xx body, passed on as it came: message and type suffice."""
    data = orjson.loads(body)
    assert isinstance(data, dict) and set(data) == {"error"}, body[:300]
    error = data["error"]
    assert isinstance(error, dict), body[:300]
    fields = {"message", "type"} if relayed else {"message", "type", "param", "code"}
    assert fields <= set(error), body[:300]
    error.setdefault("param", None)
    error.setdefault("code", None)
    assert isinstance(error["message"], str) and error["message"], body[:300]
    assert isinstance(error["type"], str) and error["type"], body[:300]
    assert error["param"] is None or isinstance(error["param"], str), body[:300]
    assert error["code"] is None or isinstance(error["code"], str), body[:300]
    return error


def assert_nothing_leaked(raw: bytes, *also: str) -> None:
    """No secret, no traceback, no exception class path in what a client or a log sees."""
    found = PYTHON_INTERNALS.search(raw)
    assert found is None, raw[max(found.start() - 200, 0) : found.end() + 200]
    for secret in (*SECRETS, *also):
        assert secret.encode() not in raw, f"{secret!r} leaked"


def wait_for(predicate: Any, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


class Probe:
    """One kept-alive client on a gateway's own routes (a new client per call costs 30 ms)."""

    def __init__(self, gateway: GatewayProcess) -> None:
        self.gateway = gateway
        self.client = httpx.Client(base_url=gateway.url, timeout=5)

    def close(self) -> None:
        self.client.close()

    def metrics(self) -> str:
        return self.client.get("/metrics").text

    def metric(self, name: str, **labels: str) -> float:
        return metric_value(self.metrics(), name, **labels)

    def assert_still_serving(self) -> None:
        """The process is up, /healthz answers, and no stream is left open."""
        proc = self.gateway.proc
        assert proc is not None and proc.poll() is None, self.gateway.output()[-3000:]
        assert self.client.get("/healthz").status_code == 200
        assert wait_for(lambda: self.metric("gateway_active_streams") == 0), "a stream leaked"


def metric_value(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels`, in Prometheus text."""
    total = 0.0
    for line in text.splitlines():
        if not (line.startswith(name + "{") or line.startswith(name + " ")):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


class LogWatch:
    """What the gateway wrote to its log since `mark()`: no traceback, no secret."""

    def __init__(self, gateway: GatewayProcess) -> None:
        self.gateway = gateway
        self.offset = 0

    def mark(self) -> None:
        self.offset = len(self.gateway.output().encode())

    def assert_clean(self) -> None:
        time.sleep(0.05)  # the request log is written off the request path
        new = self.gateway.output().encode()[self.offset :]
        assert b"unhandled error" not in new, new.decode(errors="replace")[-4000:]
        assert b"Exception in ASGI application" not in new, new.decode(errors="replace")[-4000:]
        assert_nothing_leaked(new)
