"""The benchmark's processes: start, wait until ready, measure, stop.

Every component runs in its own process on 127.0.0.1 so each one's CPU and memory can be
read from the kernel's process accounting (psutil): the fast upstream, Redis, the floor
relay, one `gateway serve` per variant, and the load generator. Each process's output goes
to a file in the run's temporary directory; a component that fails to start stops the
benchmark with that file's tail.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs in the dev dependencies
import yaml

from gateway.config import hash_key

REPO = Path(__file__).resolve().parent.parent
BENCH_KEY = "sk-bench-key"
"""The client key the gateway is configured with (generous limits, so never denied)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tcp_ready(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Service:
    """One long-running component of the benchmark."""

    def __init__(
        self,
        name: str,
        cmd: list[str],
        tmp: Path,
        port: int,
        *,
        env: dict[str, str] | None = None,
        health: str | None = None,
        cwd: Path = REPO,
    ) -> None:
        self.name = name
        self.cmd = cmd
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, **(env or {})}
        self.health = health
        self.cwd = cwd
        self.log_path = tmp / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ps: psutil.Process | None = None

    def start(self, timeout: float = 30.0) -> Service:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd
            )
        self.ps = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start-up:\n{self.tail()}")
            if self._ready():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not become ready in {timeout:g} s:\n{self.tail()}")

    def _ready(self) -> bool:
        if self.health is None:
            return _tcp_ready(self.port)
        try:
            with urllib.request.urlopen(self.url + self.health, timeout=0.5) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no output)"

    def cpu_seconds(self) -> float:
        assert self.ps is not None
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def rss(self) -> int:
        assert self.ps is not None
        return int(self.ps.memory_info().rss)

    def stop(self, timeout: float = 20.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def python_service(
    name: str, module: str, args: list[str], tmp: Path, port: int, **kw: Any
) -> Service:
    return Service(name, [sys.executable, "-m", module, *args], tmp, port, **kw)


def redis_service(tmp: Path) -> Service:
    port = free_port()
    directory = tmp / "redis"
    directory.mkdir(exist_ok=True)
    binary = os.environ.get("REDIS_SERVER_BIN", "redis-server")
    cmd = [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(directory),
        "--loglevel", "warning",
    ]  # fmt: skip
    return Service("redis", cmd, tmp, port)


def redis_command(port: int, *args: str) -> bytes:
    """One command over RESP on a plain socket; the raw reply."""
    payload = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(payload.encode())
        return sock.recv(65536)


def gateway_config(
    tmp: Path,
    name: str,
    upstream_url: str,
    redis_url: str,
    models: list[str],
    transport: str = "native",
    managed_keys: int = 0,
    spend: bool = False,
) -> Path:
    """A config with everything on: a key with (never reached) limits in Redis, a request
    log file, metrics (always on). `managed_keys`: the bench key is one of that many keys
    in a key database (`bench/keys_seed.py`), the config holding only another one. `spend`:
    prices for the models, a budget on the bench key, and the request log also written to
    the ledger of a SQLite database."""
    huge = 10**12
    config = {
        "redis_url": redis_url,
        "upstream_transport": transport,
        "providers": [
            {
                "name": "fast",
                "type": "openai",
                "base_url": upstream_url + "/v1",
                "api_key": "sk-upstream-bench",
                "max_retries": 0,
            }
        ],
        "models": [{"name": model, "provider": "fast"} for model in models],
        "keys": [
            {
                "id": "bench",
                "key_sha256": hash_key(BENCH_KEY),
                "limits": {
                    "rpm": 10_000_000,
                    "tpm": huge,
                    "max_concurrent": 100_000,
                    "daily_tokens": huge,
                    "monthly_tokens": huge,
                },
            }
        ],
        "logging": {"file": str(tmp / f"{name}-requests.jsonl")},
        "timeouts": {"connect": 5, "first_token": 30, "idle": 30, "total": 300},
    }
    if managed_keys:
        from bench.keys_seed import seed_keys

        database_url = f"sqlite:///{tmp / (name + '-keys.db')}"
        bench_key = config["keys"][0]
        seed_keys(database_url, managed_keys, BENCH_KEY, bench_key["limits"])
        config["keys"] = [{"id": "config-only", "key_sha256": hash_key("sk-bench-not-used")}]
        config["database_url"] = database_url
    if spend:
        config["pricing"] = {m: {"input": 2.5, "output": 10, "cached_input": 1.25} for m in models}
        config["keys"][0]["budget"] = {"daily_usd": 1_000_000, "monthly_usd": 1_000_000}
        config["database_url"] = f"sqlite:///{tmp / (name + '-keys.db')}"
        config["logging"]["sinks"] = ["file", "database"]  # type: ignore[index]
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class PeakRSS:
    """Samples a process's RSS every `interval` seconds in a thread; `peak` is the max."""

    def __init__(self, service: Service | None, interval: float = 0.1) -> None:
        self._service = service
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.peak = 0

    def __enter__(self) -> PeakRSS:
        if self._service is not None:
            self.peak = self._service.rss()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        assert self._service is not None
        while not self._stop.wait(self._interval):
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self._service.rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._service is not None:
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self._service.rss())
