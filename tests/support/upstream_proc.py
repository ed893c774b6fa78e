"""`python -m tests.support.fake_upstream` in a process of its own, which a test can SIGKILL
and start again on the same port (tests/integration/test_routing_e2e.py, bench/routing.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import Any

import httpx

from tests.support.gateway_proc import free_port


class UpstreamProcess:
    def __init__(self, *args: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.args = args
        """The fake's flags (`--fail-next N --retry-after S`), for every start."""
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *args: str) -> UpstreamProcess:
        """Start it (again: on the same port, with none of its old state)."""
        cmd = [sys.executable, "-m", "tests.support.fake_upstream", "--port", str(self.port)]
        self.proc = subprocess.Popen([*cmd, *(args or self.args)], stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if line != self.url:
            self.stop()
            raise RuntimeError(f"the fake upstream did not start on {self.url}: {line!r}")
        return self

    def kill(self) -> None:
        """SIGKILL: no goodbye to open connections, as a crashed host."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()

    def seen(self) -> list[dict[str, Any]]:
        """Every request it answered since it started: path, started, ended (unix times)."""
        requests: list[dict[str, Any]] = httpx.get(self.url + "/_seen", timeout=5).json()
        return requests
