"""A throwaway `redis-server` for tests: real Redis, no mocks.

`RedisServer` starts `/usr/bin/redis-server` on a free port of 127.0.0.1, without
persistence, in its own temporary directory, and waits until it answers PING. `stop()`
and `start()` again reuse the same port, so a client built once sees an outage and a
recovery, as with a restarted production Redis. The process is always killed at the end
(`close()`, the context manager, or the interpreter's exit as a last resort).

A missing binary fails the test run with a clear message instead of skipping: the limits
tests are how we know Redis-backed limits work, and a silently skipped suite proves nothing.

Deliberately not here: Redis Cluster (`tests/support/redis_cluster.py` builds one from
these) or Sentinel set-ups, and any use of redis-py (the readiness check speaks RESP over a
plain socket, so this helper works for any client).
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
from types import TracebackType

import pytest

REDIS_SERVER = os.environ.get("REDIS_SERVER_BIN", "/usr/bin/redis-server")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            # NOAUTH: up, and asking for the password it was started with.
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class RedisServer:
    """One redis-server process; `url` stays valid across stop() / start()."""

    def __init__(self, binary: str = REDIS_SERVER, **options: str) -> None:
        if shutil.which(binary) is None:
            pytest.fail(
                f"{binary} not found: the limits tests need a real Redis. Install it "
                "(apt-get install redis-server) or point REDIS_SERVER_BIN at the binary.",
                pytrace=False,
            )
        self.binary = binary
        self.extra = options
        """More redis-server options, e.g. requirepass="secret"."""
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.TemporaryDirectory(prefix="gateway-redis-")
        self._log = os.path.join(self._dir.name, "redis.log")
        self._process: subprocess.Popen[bytes] | None = None
        atexit.register(self.close)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        options = {
            "port": str(self.port),
            "bind": "127.0.0.1",
            "save": "",
            "appendonly": "no",
            "dir": self._dir.name,
            "logfile": self._log,
            "loglevel": "warning",
            **self.extra,
        }
        args = [self.binary]
        for name, value in options.items():
            args += [f"--{name}", value]
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not _pings(self.port):
            if self._process.poll() is not None:
                self._process = None
                pytest.fail(f"redis-server exited at start-up on port {self.port}: {self._tail()}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"redis-server did not answer PING on port {self.port} in {timeout}s")
            time.sleep(0.02)

    def _tail(self) -> str:
        try:
            with open(self._log, encoding="utf-8", errors="replace") as log:
                return log.read()[-2000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Kill the server (as an outage would); the port is reused by start()."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
