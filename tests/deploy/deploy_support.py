"""Helpers for the deployment tests: the project's nginx config run for real, and SSE streams
read with the arrival time of every event.

`render_nginx` copies `nginx/` into a prefix directory unchanged except for the two things a
test must choose: the listen port (the one `listen 8080;` line of gateway.conf) and the
replica list (replicas.conf, written with the options of the shipped one). Everything else
(buffering, timeouts, retries, headers) is exactly what deploys.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.support.gateway_proc import KEY_A, free_port

REPO = Path(__file__).resolve().parents[2]
NGINX_DIR = REPO / "nginx"
MESSAGES = [{"role": "user", "content": "Say something."}]

LONG_MODEL = {"name": "gpt-long", "provider": "fake", "upstream_model": "text?n=200&pace_ms=50"}
"""A 10 s stream (200 tokens, 50 ms apart), for tests that must end a stream early."""


def nginx_binary() -> str:
    """The nginx to test with. Missing nginx fails the test: these tests are the proof that
    the shipped config works, and a skip would hide that it was never run."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        pytest.fail(
            "nginx is not installed, and tests marked `nginx` run the real one: "
            "apt-get install nginx (Debian/Ubuntu) or run `make test`, which installs it"
        )
    return found


def render_nginx(prefix: Path, replicas: Sequence[str], port: int) -> Path:
    """nginx/ as shipped, listening on 127.0.0.1:`port` in front of `replicas` (host:port).

    Returns the main config file. Fails loudly if the shipped files stop having the shape
    this relies on, rather than silently testing something else.
    """
    prefix.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(NGINX_DIR / "nginx.conf", prefix / "nginx.conf")
    conf = (NGINX_DIR / "gateway.conf").read_text()
    conf, count = re.subn(r"^(\s*)listen 8080;", rf"\1listen 127.0.0.1:{port};", conf, flags=re.M)
    assert count == 1, "nginx/gateway.conf must have exactly one `listen 8080;` line"
    (prefix / "gateway.conf").write_text(conf)
    shipped = re.findall(
        r"^\s*server\s+(\S+)\s*([^;]*);", (NGINX_DIR / "replicas.conf").read_text(), flags=re.M
    )
    assert shipped, "nginx/replicas.conf lists no `server` line"
    options = shipped[0][1].strip()
    lines = [f"server {address} {options};\n".replace(" ;", ";") for address in replicas]
    (prefix / "replicas.conf").write_text("".join(lines))
    return prefix / "nginx.conf"


def nginx_command(conf: Path, *extra: str, directives: str = "") -> list[str]:
    """`nginx -e stderr -p PREFIX/ -c CONF [-g DIRECTIVES] EXTRA...`.

    Deployed, nginx runs as one unprivileged user (the config has no `user` directive), so
    its workers can write the temp files under the prefix. Started as root, as tests in a
    container are, nginx would hand its workers to `nobody`, who cannot enter pytest's
    private tmp dir: keep them on the starting user, as deployed.
    """
    if os.geteuid() == 0:
        directives = f"{directives} user root;".strip()
    options = ["-g", directives] if directives else []
    return [
        nginx_binary(),
        "-e",
        "stderr",
        "-p",
        f"{conf.parent}/",
        "-c",
        str(conf),
        *options,
        *extra,
    ]


class NginxProcess:
    """The real nginx in the foreground, with the project's config rendered into `prefix`."""

    def __init__(self, prefix: Path, replicas: Sequence[str]) -> None:
        self.port = free_port()
        self.conf = render_nginx(prefix, replicas, self.port)
        self.stdout_path = prefix / "access.log"
        self.stderr_path = prefix / "error.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> NginxProcess:
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                nginx_command(self.conf, directives="daemon off;"), stdout=out, stderr=err
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited early:\n{self.errors()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.02)
        raise RuntimeError(f"nginx did not listen on {self.port}:\n{self.errors()}")

    def access_log(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def errors(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # fast shutdown: open test streams are not waited
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> NginxProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- streams with timing -------------------------------------------------------------------


@dataclass
class TimedStream:
    """One SSE response: each event's text and the monotonic time it arrived."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    events: list[tuple[float, str]] = field(default_factory=list)
    closed_at: float | None = None
    """When the client closed the stream early (`stop_after`); None if read to the end."""
    started: threading.Event = field(default_factory=threading.Event)
    """Set when the first event arrived (for tests that act in the middle of a stream)."""

    @property
    def data(self) -> list[str]:
        """The `data:` payloads, in order (comments such as `: keep-alive` left out)."""
        return [e[5:].strip() for _, e in self.events if e.startswith("data:")]

    @property
    def data_times(self) -> list[float]:
        return [t for t, e in self.events if e.startswith("data:")]

    def tokens(self) -> str:
        """The streamed text: every chunk's `delta.content`, joined."""
        text = []
        for payload in self.data:
            if payload == "[DONE]":
                continue
            chunk = orjson.loads(payload)
            for choice in chunk.get("choices") or []:
                text.append((choice.get("delta") or {}).get("content") or "")
        return "".join(text)


def stream_chat(
    base_url: str,
    model: str,
    *,
    headers: dict[str, str] | None = None,
    stop_after: int | None = None,
    timeout: float = 30.0,
    into: TimedStream | None = None,
) -> TimedStream:
    """POST a streaming chat completion and time each event as it arrives.

    Reads raw bytes (not lines) so an event's time is when its last byte arrived, not when
    a buffered reader got round to it. With `stop_after`, closes the connection after that
    many events, as a client that goes away does.
    """
    result = into or TimedStream()
    body: dict[str, Any] = {"model": model, "messages": MESSAGES, "stream": True}
    with (
        httpx.Client(timeout=timeout) as client,
        client.stream(
            "POST",
            base_url + "/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {KEY_A}", **(headers or {})},
        ) as response,
    ):
        result.status = response.status_code
        result.headers = dict(response.headers)
        if response.status_code != 200:
            response.read()
            result.events.append((time.monotonic(), response.text))
            return result
        buffer = b""
        for chunk in response.iter_raw():
            now = time.monotonic()
            buffer += chunk
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                result.events.append((now, event.decode()))
                result.started.set()
                if stop_after is not None and len(result.events) >= stop_after:
                    response.close()
                    result.closed_at = time.monotonic()
                    return result
    return result


@contextmanager
def background_stream(base_url: str, model: str, **kwargs: Any) -> Iterator[TimedStream]:
    """`stream_chat` in a thread; yields once the first event arrived, joins on exit."""
    result = TimedStream()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            stream_chat(base_url, model, into=result, **kwargs)
        except BaseException as exc:  # handed to the test below, not swallowed
            errors.append(exc)
        finally:
            result.started.set()

    thread = threading.Thread(target=run, name=f"stream-{model}", daemon=True)
    thread.start()
    try:
        assert result.started.wait(10), f"no first event from {base_url} for {model}"
        if errors:
            raise errors[0]
        yield result
    finally:
        thread.join(30)
    if errors:
        raise errors[0]
    assert not thread.is_alive(), "the stream did not end"


def gaps_ms(times: Sequence[float]) -> list[float]:
    return [(b - a) * 1000 for a, b in itertools.pairwise(times)]


def pace_summary(label: str, times: Sequence[float]) -> dict[str, float]:
    """Median and p90 of the inter-arrival gaps, and first-to-last spread; printed."""
    gaps = sorted(gaps_ms(times))
    summary = {
        "median_ms": statistics.median(gaps),
        "p90_ms": gaps[int(0.9 * (len(gaps) - 1))],
        "max_ms": gaps[-1],
        "spread_s": times[-1] - times[0],
        "events": float(len(times)),
    }
    print(
        f"{label}: {len(times)} events, inter-arrival median {summary['median_ms']:.1f} ms, "
        f"p90 {summary['p90_ms']:.1f} ms, max {summary['max_ms']:.1f} ms, "
        f"first to last {summary['spread_s']:.2f} s"
    )
    return summary


def wait_until(predicate: Any, timeout: float = 5.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
