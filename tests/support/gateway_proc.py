"""Run the real `gateway serve` in a subprocess on a free port, as users run it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from gateway.config import hash_key

KEY_A = "sk-test-team-a"
KEY_B = "sk-test-team-b"
ADMIN_KEY = "sk-test-admin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_config(upstream_url: str, **overrides: Any) -> dict[str, Any]:
    """A config in front of the fake upstream: one model per scripted scenario."""
    openai_models = {
        "gpt-test": "text?n=12",
        "gpt-tools": "tools",
        "gpt-midstream": "midstream_error?at=5",
        "gpt-truncate": "truncate?at=5",
        "gpt-garbage": "garbage?at=3",
        "gpt-500": "status?code=500",
        "gpt-400": "status?code=400",
        "gpt-401": "status?code=401",
        "gpt-html": "html",
        "gpt-paced": "text?n=40&pace_ms=50",
        "gpt-slow-first": "text?ttft_ms=3000",
        "gpt-stall": "stall?at=3&stall_s=5",
    }
    models: list[dict[str, Any]] = [
        {"name": name, "provider": "fake", "upstream_model": upstream}
        for name, upstream in openai_models.items()
    ]
    models += [
        {"name": "claude-test", "provider": "fake-anthropic", "upstream_model": "text?n=12"},
        {"name": "claude-tools", "provider": "fake-anthropic", "upstream_model": "tools"},
        {"name": "claude-error", "provider": "fake-anthropic", "upstream_model": "midstream_error"},
        {
            "name": "gpt-fallback",
            "provider": "fake",
            "upstream_model": "status?code=503",
            "fallbacks": ["claude-test"],
        },
        {"name": "mock-gpt", "provider": "demo"},
    ]
    config: dict[str, Any] = {
        "providers": [
            {
                "name": "fake",
                "type": "openai",
                "base_url": upstream_url + "/v1",
                "api_key": "${FAKE_UPSTREAM_SECRET:-sk-upstream-secret-value}",
                "max_retries": 1,
            },
            {
                "name": "fake-anthropic",
                "type": "anthropic",
                "base_url": upstream_url,
                "api_key": "sk-ant-upstream-secret-value",
                "max_retries": 1,
            },
            {"name": "demo", "type": "mock", "first_token_ms": 20, "token_ms": 5},
        ],
        "models": models,
        "keys": [
            {"id": "team-a", "key_sha256": hash_key(KEY_A)},
            {"id": "team-b", "key_sha256": hash_key(KEY_B), "models": ["gpt-test"]},
        ],
        "admin_key_sha256": hash_key(ADMIN_KEY),
        "timeouts": {"connect": 2, "first_token": 10, "idle": 10, "total": 60},
    }
    config.update(overrides)
    return config


test_config.__test__ = False  # type: ignore[attr-defined]  # a builder, not a test


class GatewayProcess:
    """`gateway serve --config FILE --port N`, started and stopped like a user would."""

    def __init__(
        self,
        config: dict[str, Any] | None,
        tmp: Path,
        *,
        workers: int = 1,
        env: dict[str, str] | None = None,
        port: int | None = None,
        split_stderr: bool = False,
    ) -> None:
        self.port = port or free_port()
        self.tmp = tmp
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = tmp / f"gateway-{self.port}.yaml"
            self.config_path.write_text(yaml.safe_dump(config))
        self.stdout_path = tmp / f"gateway-{self.port}.out"
        # By default stderr (process logs) joins stdout (the request log) in one file.
        self.stderr_path = tmp / f"gateway-{self.port}.err" if split_stderr else None
        self.workers = workers
        self.env = {**os.environ, **(env or {})}
        self.env.pop("GATEWAY_CONFIG", None)
        self.proc: subprocess.Popen[bytes] | None = None
        self._probe: httpx.Client | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def probe(self) -> httpx.Client:
        """A client for the test's own small requests (health, metrics): `httpx.get` builds
        a client and loads its TLS context per call, ~35 ms of CPU taken from the gateway
        beside it on a busy box. No connection is kept, so each request may reach any
        worker. Closed by `stop()`."""
        if self._probe is None:
            self._probe = httpx.Client(
                base_url=self.url, limits=httpx.Limits(max_keepalive_connections=0), timeout=5
            )
        return self._probe

    def start(self, timeout: float = 60.0) -> GatewayProcess:
        """Started once every worker answers /healthz. `timeout` guards against a hang, it
        is no performance claim: a worker imports the whole gateway (~2 s of CPU), and two
        workers on a busy 2-core box took 11-29 s to answer."""
        cmd = [sys.executable, "-m", "gateway", "serve", "--port", str(self.port)]
        if self.config_path is not None:
            cmd += ["--config", str(self.config_path)]
        if self.workers > 1:
            cmd += ["--workers", str(self.workers)]
        self._out = open(self.stdout_path, "ab")  # noqa: SIM115 - closed in stop()
        err: Any = subprocess.STDOUT
        if self.stderr_path is not None:
            err = self._err = open(self.stderr_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=err, env=self.env)
        try:
            self._wait_healthy(timeout)
        except BaseException:
            # Stopped here: a `with` block whose start failed never calls stop(), and the
            # process left running (its Popen's ResourceWarning an error in whichever test
            # was running when it was collected) failed the next test too.
            self.stop()
            raise
        return self

    def _wait_healthy(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        pids: set[int] = set()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited early:\n{self.output()}{self.errors()}")
            try:
                # (20 a second: with `httpx.get` the probing alone took ~0.7 of a core)
                health = self.probe.get("/healthz", timeout=0.5)
                if health.status_code == 200:
                    pids.add(health.json()["pid"])
                    if len(pids) >= self.workers:  # every worker answers, not just the first
                        return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"gateway did not become healthy:\n{self.output()}{self.errors()}")

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def errors(self) -> str:
        """stderr, when it was kept apart (`split_stderr`)."""
        path = self.stderr_path
        return path.read_text(errors="replace") if path is not None and path.exists() else ""

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._out.close()
        if self.stderr_path is not None:
            self._err.close()
        if self._probe is not None:
            self._probe.close()
            self._probe = None
        return code

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def sequential_ttfts(url: str, key: str, model: str, n: int) -> list[float]:
    """Seconds to the first `data:` line of `n` streams run one after another on one
    kept-alive connection (each stream is read to its end before the next starts)."""
    times: list[float] = []
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(timeout=30) as client:
        for _ in range(n):
            start = time.perf_counter()
            with client.stream(
                "POST", url, headers={"authorization": f"Bearer {key}"}, json=body
            ) as response:
                lines = response.iter_lines()
                for line in lines:
                    if line.startswith("data: "):
                        times.append(time.perf_counter() - start)
                        break
                for _ in lines:
                    pass
    return times
