"""A throwaway `tinyproxy`: the real HTTP proxy the egress-proxy tests go through.

`Tinyproxy` starts Debian's tinyproxy in the foreground on a free port of 127.0.0.1, with
a temporary config (`Allow 127.0.0.1`, any CONNECT port, optionally `BasicAuth`), and waits
until it accepts connections. `requests()` reads its log: every request it carried, as its
request line (`CONNECT 127.0.0.1:443 HTTP/1.1`, `POST http://127.0.0.1:80/v1/... HTTP/1.1`),
which is how a test knows the proxy really carried a request.

A missing binary fails the run with a clear message instead of skipping (`.ci/system-deps`
installs it).
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import pytest

from tests.support.redis_server import free_port

TINYPROXY = "/usr/bin/tinyproxy"
_REQUEST = re.compile(r"Request \(file descriptor \d+\): (.+)$")


class Tinyproxy:
    def __init__(self, *, user: str = "", password: str = "") -> None:
        if shutil.which(TINYPROXY) is None:
            pytest.fail(
                f"{TINYPROXY} not found: the egress-proxy tests need a real proxy. Install it "
                "(apt-get install tinyproxy, or run .ci/system-deps).",
                pytrace=False,
            )
        self.port = free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="gateway-tinyproxy-")
        self.log = Path(self._dir.name) / "tinyproxy.log"
        lines = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            "Timeout 30",
            "Allow 127.0.0.1",
            "MaxClients 100",
            "LogLevel Connect",
            f'LogFile "{self.log}"',
            # No ConnectPort line: CONNECT to any port (the fake upstream's is random).
        ]
        if user:
            lines.append(f"BasicAuth {user} {password}")
        self._conf = Path(self._dir.name) / "tinyproxy.conf"
        self._conf.write_text("\n".join(lines) + "\n")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[str]:
        """The request line of every request the proxy carried so far, in order."""
        if not self.log.exists():
            return []
        text = self.log.read_text(errors="replace")
        return [m[1] for line in text.splitlines() if (m := _REQUEST.search(line))]

    def __enter__(self) -> Tinyproxy:
        self._process = subprocess.Popen(
            [TINYPROXY, "-d", "-c", str(self._conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.__exit__(None, None, None)
                    pytest.fail(f"tinyproxy did not start on port {self.port}", pytrace=False)
                time.sleep(0.02)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(10)
            self._process = None
        self._dir.cleanup()
