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
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs in the dev dependencies
import yaml

from gateway.config import hash_key

REPO = Path(__file__).resolve().parent.parent
BENCH_KEY = "sk-bench-key"
"""The client key the gateway is configured with (generous limits, so never denied)."""


def raise_nofile() -> int:
    """Raise this process's open-file limit to its hard limit (thousands of streams are
    thousands of sockets); processes it starts inherit it. The new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


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
        tail = self.tail()
        self.stop()  # not left running: nothing else knows of it (seen: a gateway for 90 min)
        raise RuntimeError(f"{self.name} did not become ready in {timeout:g} s:\n{tail}")

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

    def processes(self) -> list[psutil.Process]:
        """The process and its children (nginx's worker, `gateway serve --workers N`'s
        workers): what is measured is the sum over all of them."""
        assert self.ps is not None
        try:
            return [self.ps, *self.ps.children(recursive=True)]
        except psutil.Error:
            return [self.ps]

    def cpu_seconds(self) -> float:
        return process_cpu(self.processes())

    def rss(self) -> int:
        total = 0
        for ps in self.processes():
            with contextlib.suppress(psutil.Error):
                total += int(ps.memory_info().rss)
        return total

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


UPSTREAM_IDLE = 4096
"""Idle upstream connections every relay keeps, at most: nginx's `keepalive`, the gateway's
`upstream_pool.max_idle`, the raw floor's. The same for all, so no relay opens connections
in a burst that another reuses from the one before (sessions before 16 gave the gateway
1,024 against nginx's 4,096)."""
UPSTREAM_IDLE_S = 60
"""Seconds an idle upstream connection is kept (nginx's `keepalive_timeout`)."""


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
        "upstream_pool": {"max_idle": UPSTREAM_IDLE, "idle_timeout": UPSTREAM_IDLE_S},
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
        # total: longer than soak-scale's streams (minutes each).
        "timeouts": {"connect": 5, "first_token": 30, "idle": 30, "total": 3600},
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


def process_cpu(processes: list[psutil.Process]) -> float:
    """User + system CPU seconds of these processes (those gone meanwhile count 0)."""
    total = 0.0
    for ps in processes:
        with contextlib.suppress(psutil.Error):
            times = ps.cpu_times()
            total += times.user + times.system
    return total


NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def nginx_available() -> bool:
    return os.access(NGINX, os.X_OK)


def nginx_service(tmp: Path, upstream_url: str, nofile: int) -> Service:
    """nginx as a reference relay: the repo's production proxying directives for streams
    (nginx/gateway.conf: no buffering, HTTP/1.1 keep-alive upstream with an empty
    Connection header, long read timeout), one worker process, no access log, enough
    connections for 5,000 streams (two sockets each), run as the current user with every
    runtime path under its own prefix directory in the run's tmp."""
    prefix = tmp / "nginx"
    prefix.mkdir(exist_ok=True)
    port = free_port()
    upstream = upstream_url.removeprefix("http://")
    connections = max(1024, min(nofile - 64, 65535))
    # Beyond nginx/: `multi_accept on` (a burst is accepted in one go, as uvloop does) and
    # the listen backlog of uvicorn's default (2048), so the gateway's and the floor's too.
    conf = f"""worker_processes 1;
worker_rlimit_nofile {nofile};
pid nginx.pid;
error_log stderr warn;
events {{
    worker_connections {connections};
    multi_accept on;
}}
http {{
    access_log off;
    client_body_temp_path client_temp;
    proxy_temp_path proxy_temp;
    fastcgi_temp_path fastcgi_temp;
    uwsgi_temp_path uwsgi_temp;
    scgi_temp_path scgi_temp;
    upstream fake {{
        server {upstream} max_fails=0;
        keepalive {UPSTREAM_IDLE};
        keepalive_timeout {UPSTREAM_IDLE_S}s;
        keepalive_requests 100000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=2048;
        client_max_body_size 8m;
        client_body_buffer_size 1m;
        keepalive_timeout 75s;
        location / {{
            proxy_pass http://fake;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_buffering off;
            proxy_cache off;
            gzip off;
            proxy_connect_timeout 2s;
            proxy_send_timeout 60s;
            proxy_read_timeout 660s;
            send_timeout 60s;
        }}
    }}
}}
"""
    path = prefix / "nginx.conf"
    path.write_text(conf)
    cmd = [NGINX, "-e", "stderr", "-p", str(prefix), "-c", str(path), "-g", "daemon off;"]
    return Service("nginx", cmd, tmp, port)


class Sampler:
    """Samples, in a thread, the relay's RSS every `interval` seconds (`idle`: before the
    run, `peak`: the highest, `timeline`: (seconds, bytes) every `every` seconds) and each
    named process group's core use over `window`-second windows (`core_peak`: the highest
    share of one core, 1.0 = a full core; a group of several processes can exceed 1)."""

    def __init__(
        self,
        relay: Service | None,
        groups: dict[str, Callable[[], list[psutil.Process]]],
        interval: float = 0.1,
        window: float = 0.25,
        every: float = 10.0,
    ) -> None:
        self._relay = relay
        self._groups = groups
        self._interval = interval
        self._window = window
        self._every = every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.idle = 0
        self.peak = 0
        self.timeline: list[tuple[float, int]] = []
        self.core_peak: dict[str, float] = dict.fromkeys(groups, 0.0)

    def __enter__(self) -> Sampler:
        if self._relay is not None:
            self.idle = self.peak = self._relay.rss()
            self.timeline.append((0.0, self.idle))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _cpu(self) -> dict[str, float]:
        return {name: process_cpu(procs()) for name, procs in self._groups.items()}

    def _run(self) -> None:
        started = last = time.monotonic()
        cpu = self._cpu()
        while not self._stop.wait(self._interval):
            now = time.monotonic()
            if self._relay is not None:
                with contextlib.suppress(psutil.Error):
                    rss = self._relay.rss()
                    self.peak = max(self.peak, rss)
                    if now - started >= self._every * len(self.timeline):
                        self.timeline.append((now - started, rss))
            if now - last >= self._window:
                fresh = self._cpu()
                for name, seconds in fresh.items():
                    share = (seconds - cpu[name]) / (now - last)
                    self.core_peak[name] = max(self.core_peak[name], share)
                cpu, last = fresh, now

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._relay is not None:
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self._relay.rss())
