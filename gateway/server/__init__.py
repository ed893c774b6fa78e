"""Running the app under uvicorn, with a shutdown that lets answers finish.

uvicorn's own shutdown stops accepting connections at once. A rolling deploy wants more:
on SIGTERM (or the first Ctrl-C) the gateway keeps its socket open, answers `/readyz` with
503 and new API requests with 503 + `connection: close` (so load balancers move on), lets
open streams run to their end for up to `shutdown_grace` seconds, then ends the rest with
an SSE error event. Only then does uvicorn's shutdown run (the request log drains in the
app's lifespan) and the process exits 0. A second signal exits at once.

This package is the one place that touches uvicorn's internals: here its `_subprocess` for
workers and its server's tick, in `gateway.server.protocol` its httptools protocol, in
`gateway.server.cycle` the gateway's own request cycle under it. Importing any of them on a
uvicorn outside `gateway.versions.TESTED` raises `UntestedUvicorn` (the package's `__init__`
runs first). Each patch has a test in tests/test_server.py, and its cost or saving is in
docs/performance.md.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
from multiprocessing.context import SpawnProcess
from types import FrameType

import uvicorn
from starlette.applications import Starlette
from uvicorn._subprocess import get_subprocess

from gateway.asgi import STATE_KEY
from gateway.observability.metrics import mark_process_dead
from gateway.observability.requestlog import configure_process_logging
from gateway.runtime import Runtime
from gateway.versions import TESTED, check_tested_versions

_log = logging.getLogger("gateway.server")


class UntestedUvicorn(RuntimeError):
    """Raised on importing this package over a uvicorn outside the tested range."""


# Everything below leans on uvicorn's internals as the tested releases have them; on another
# release it would fail as a hung stream rather than an error, so importing this package
# refuses (`gateway serve` checks the same range first, with a log line; this guards any
# other way in, e.g. `bench.serve_variant`). `GATEWAY_ALLOW_UNTESTED=1` lets it through.
_guard = check_tested_versions(os.environ, tested={"uvicorn": TESTED["uvicorn"]})
if _guard.refuse:
    raise UntestedUvicorn(_guard.messages[0])


from gateway.server.collector import Collector, take_over  # noqa: E402
from gateway.server.protocol import BoundedHttpToolsProtocol  # noqa: E402

LISTEN_BACKLOG = 65535
"""The listen backlog asked for; Linux caps it at `net.core.somaxconn` (4096 by default
since 5.4): the kernel's own bound, which Go's net package asks for too. uvicorn's 2048
overflowed in a burst of 5,000 connections while the loop was busy setting requests up: the
kernel dropped the SYNs past it, and those clients waited for their retry a second or more
later (docs/performance.md, "Thousands of streams")."""


class GatewayServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._drain_since: float | None = None
        self._signals = 0
        self._collector: Collector | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # The cycle collector runs from the tick, between bursts (gateway.server.collector).
        self._collector = take_over()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().shutdown(sockets)
        finally:
            gc.enable()  # the process may go on (tests, an embedding program)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # One stop can arrive twice: Ctrl-C or systemd signal the whole process group, and
        # the supervisor forwards its copy too. Only a signal after the first second forces.
        if self._drain_since is not None and time.monotonic() - self._drain_since < 1.0:
            return
        self._signals += 1
        if self._signals > 1:
            self.force_exit = True
            self.should_exit = True
            return
        self._drain_since = time.monotonic()

    async def on_tick(self, counter: int) -> bool:
        should_exit = await super().on_tick(counter)
        if self._collector is not None:
            self._collector.tick()
        if self._drain_since is None or should_exit:
            return should_exit
        state: Runtime | None = self.lifespan.state.get(STATE_KEY)
        if state is None:
            self.should_exit = True
            return True
        if not state.draining:
            state.draining = True
            _log.info("worker %d draining: %d open request(s)", os.getpid(), len(state.watches))
        waited = time.monotonic() - self._drain_since
        if waited >= state.config.shutdown_grace:
            for watch in list(state.watches):
                watch.end("shutdown")
        if not self.server_state.tasks or waited >= state.config.shutdown_grace + 5:
            self.should_exit = True
            return True
        return False


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything says it listens: a busy port is an
    OSError here, not a banner followed by uvicorn's exit. (uvicorn's `Config.bind_socket`,
    minus its logging and its `sys.exit`.)"""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)  # the workers get it
    return sock


def serve(app: Starlette | str, *, sock: socket.socket, workers: int, grace: float) -> None:
    """Serve on `sock` (from `bind`) until stopped; `app` is an import string when
    `workers` > 1 (each worker builds its own)."""
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        workers=workers,
        factory=isinstance(app, str),
        access_log=False,
        # Its loggers propagate to the root's one handler (`configure_process_logging`)
        # rather than getting uvicorn's own console handlers.
        log_config=None,
        log_level=os.environ.get("GATEWAY_UVICORN_LOG_LEVEL", "warning"),
        timeout_keep_alive=75,
        backlog=LISTEN_BACKLOG,
        timeout_graceful_shutdown=int(grace) + 10,
        lifespan="on",
        http=BoundedHttpToolsProtocol,
        # The gateway reads no client address; uvicorn's X-Forwarded-For middleware would
        # only add a layer to every request.
        proxy_headers=False,
    )
    if workers > 1:
        sys.exit(_supervise(config, sock, workers))
    GatewayServer(config).run(sockets=[sock])


def _run_worker(config: uvicorn.Config, sockets: list[socket.socket]) -> None:
    """A worker process's life: the same logging pipeline as its parent's, then serving."""
    configure_process_logging()
    GatewayServer(config).run(sockets=sockets)


def _supervise(config: uvicorn.Config, sock: socket.socket, workers: int) -> int:
    """Run `workers` processes on one listening socket; pass SIGTERM/SIGINT on to them.

    uvicorn's own supervisor builds plain `uvicorn.Server`s in its workers, which would lose
    the draining shutdown above; this one is small enough to own. A worker that dies
    unexpectedly is replaced. Each dead worker is marked dead in the metrics directory, so
    the streams it had open leave `gateway_active_streams` (a SIGKILLed worker never runs
    its own `Metrics.close`).
    """
    stopping = threading.Event()
    target = functools.partial(_run_worker, config)

    def start() -> SpawnProcess:
        process = get_subprocess(config, target=target, sockets=[sock])
        process.start()
        return process

    processes = [start() for _ in range(workers)]
    forwarded: set[int] = set()

    def forward(sig: int, frame: FrameType | None) -> None:
        stopping.set()
        forwarded.add(sig)
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, sig)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    while not stopping.wait(0.5):
        for i, process in enumerate(processes):
            if not process.is_alive() and not stopping.is_set():
                _log.warning("worker %s exited (%s); restarting", process.pid, process.exitcode)
                if process.pid is not None:
                    mark_process_dead(process.pid)
                processes[i] = start()
    for process in processes:
        process.join()
        if process.pid is not None:
            mark_process_dead(process.pid)
    sock.close()
    # A worker still starting up when the stop came dies of the signal itself (-SIGTERM):
    # it served nothing, so that is a clean stop too.
    clean = {0, None, *(-sig for sig in forwarded)}
    return max((abs(p.exitcode or 0) for p in processes if p.exitcode not in clean), default=0)
