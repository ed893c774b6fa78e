"""CPU time per step of a request, in the real server (docs/performance.md, "Round 3").

`python -m bench.step_probe tree DIR` writes DIR/gateway (`git archive` of this checkout's
`gateway/`) with a `__main__` that, before the app is built, wraps each step's function in
a probe adding up `time.thread_time_ns()` around it: the thread's own CPU time, so neither
other load on the box nor waiting for a core counts. Coroutines are timed across every
resumption, so an awaited reply costs them nothing. Run DIR as a bench candidate
(`python -m bench --scenario requests --targets gateway --transport native
--no-server-variants --no-routes --candidate DIR`); at exit the probed server writes
`steps-<pid>.json` into `$STEP_PROBE_DIR` (default: DIR). `python -m bench.step_probe show
FILE...` prints each step's own CPU per request (inclusive less its probed children and
the probes' own cost, measured in a loop: about 0.7 µs inside a probe, 0.8 / 1.8 µs
outside a sync / async one) as a Markdown table. The probes still inflate the figures
somewhat (compare the candidate's CPU with the plain gateway's in the same run): the
shares are the firmer figure.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import functools
import gc
import importlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
tt = time.thread_time_ns
NS: dict[str, int] = collections.defaultdict(int)
N: dict[str, int] = collections.defaultdict(int)
SYNC_OUT, ASYNC_OUT, INSIDE = 0.8, 1.8, 0.7

NATIVE = "native transport own: the response, NativeBody"
# (module, attribute path, label, parent label, async?). A label's own time is its
# inclusive time less its children's (and `uvicorn send`'s, which runs inside the relay).
PROBES: list[tuple[str, str, str, str | None, bool]] = [
    (
        "gateway.server.protocol",
        "BoundedHttpToolsProtocol.__init__",
        "accept: protocol object",
        None,
        False,
    ),
    (
        "gateway.server.protocol",
        "BoundedHttpToolsProtocol.connection_made",
        "accept: connection_made",
        None,
        False,
    ),
    (
        "gateway.server.protocol",
        "BoundedHttpToolsProtocol.data_received",
        "HTTP parse (httptools) + ASGI scope + task start",
        None,
        False,
    ),
    (
        "gateway.server.protocol",
        "BoundedHttpToolsProtocol.connection_lost",
        "client connection close",
        None,
        False,
    ),
    (
        "gateway.server.protocol",
        "BoundedHttpToolsProtocol.eof_received",
        "client connection close (eof)",
        None,
        False,
    ),
    (
        "gateway.server.cycle",
        "_Cycle.run_asgi",
        "ASGI app entry + routing (run_asgi, GatewayApp)",
        None,
        True,
    ),
    (
        "gateway.server.cycle",
        "_Cycle.send",
        "uvicorn send: start, body, end (without the socket write)",
        "ASGI app entry + routing (run_asgi, GatewayApp)",
        True,
    ),
    (
        "gateway.server.cycle",
        "_Cycle._write",
        "client socket write",
        "uvicorn send: start, body, end (without the socket write)",
        False,
    ),
    # The body writer's start (head and first event) and end, which the relay calls instead
    # of `send` where the server would write at once: `send`'s own steps, so its label
    # (their socket write is `_write`'s, as for `send`).
    (
        "gateway.server.cycle",
        "_Cycle.start",
        "uvicorn send: start, body, end (without the socket write)",
        "ASGI app entry + routing (run_asgi, GatewayApp)",
        False,
    ),
    (
        "gateway.server.cycle",
        "_Cycle.end",
        "uvicorn send: start, body, end (without the socket write)",
        "ASGI app entry + routing (run_asgi, GatewayApp)",
        False,
    ),
    ("gateway.server.cycle", "_Cycle.write", "client socket write (chunk)", None, False),
    (
        "gateway.edge.completions",
        "RelayEndpoint.__call__",
        "request id, RequestRecord, endpoint frame",
        "ASGI app entry + routing (run_asgi, GatewayApp)",
        True,
    ),
    (
        "gateway.edge.completions",
        "RelayEndpoint._open",
        "RelayContext, draining check (RelayEndpoint._open own)",
        "request id, RequestRecord, endpoint frame",
        True,
    ),
    (
        "gateway.edge.keys",
        "Keys.authenticate",
        "auth: key lookup",
        "RelayContext, draining check (RelayEndpoint._open own)",
        False,
    ),
    (
        # Not a coroutine since a body that came with the head is read without one: a body
        # that has to be waited for is timed only up to its first wait.
        "gateway.edge.completions",
        "read_request_body",
        "body read",
        "RelayContext, draining check (RelayEndpoint._open own)",
        False,
    ),
    (
        "gateway.edge.requests",
        "parse_request",
        "body JSON parse + checks",
        "RelayContext, draining check (RelayEndpoint._open own)",
        False,
    ),
    (
        "gateway.edge.completions",
        "resolve_model",
        "model resolve",
        "RelayContext, draining check (RelayEndpoint._open own)",
        False,
    ),
    (
        # The verdict on the admission since `_admit`'s coroutine went (the price reserve is
        # now in `_open`'s own): the label kept, so runs before and after line up.
        "gateway.edge.completions",
        "_admitted",
        "limits admission: price reserve (_admit own)",
        "RelayContext, draining check (RelayEndpoint._open own)",
        False,
    ),
    (
        "gateway.limits.redis_store",
        "RedisLimiter.admit",
        "limits admission: command, reply, RateState",
        "RelayContext, draining check (RelayEndpoint._open own)",
        True,
    ),
    (
        "gateway.edge.completions",
        "rate_limit_headers",
        "rate-limit response headers",
        "limits admission: price reserve (_admit own)",
        False,
    ),
    (
        "gateway.edge.completions",
        "_finish",
        "finish: _finish own + Finished.add",
        "request id, RequestRecord, endpoint frame",
        False,
    ),
    (
        "gateway.limits.redis_store",
        "RedisLimiter.settle_soon",
        "finish: settle command (settle_soon)",
        "finish: _finish own + Finished.add",
        False,
    ),
    (
        "gateway.observability.finished",
        "Finished.add",
        "finish: Finished.add",
        "finish: _finish own + Finished.add",
        False,
    ),
    (
        "gateway.limits.resp",
        "_Connection.flush",
        "Redis socket write (flush callback)",
        None,
        False,
    ),
    (
        "gateway.limits.resp",
        "_Connection.data_received",
        "Redis replies parsed (callback)",
        None,
        False,
    ),
    (
        "gateway.relay.stream",
        "Relay.stream",
        "Relay.stream own",
        "request id, RequestRecord, endpoint frame",
        True,
    ),
    (
        "gateway.relay.stream",
        "Relay._watch",
        "relay: StreamWatch set-up",
        "Relay.stream own",
        False,
    ),
    (
        "gateway.relay.attempts",
        "Attempts.on",
        "attempts + UpstreamCall (Attempts.on own)",
        "Relay.stream own",
        True,
    ),
    (
        "gateway.relay.attempts",
        "Attempts._plan",
        "routing plan (Attempts._plan own)",
        "Relay.stream own",
        True,
    ),
    (
        "gateway.routing",
        "Router._order",
        "routing plan (Router._order)",
        "routing plan (Attempts._plan own)",
        False,
    ),
    (
        "gateway.relay.stream",
        "Relay._open_first",
        "first-token timeout scope (_open_first own)",
        "attempts + UpstreamCall (Attempts.on own)",
        True,
    ),
    (
        "gateway.providers.openai",
        "OpenAIProvider.open_stream",
        "open_event_stream + SSEUpstream (open_stream own)",
        "first-token timeout scope (_open_first own)",
        True,
    ),
    (
        "gateway.providers.openai",
        "OpenAIProvider._request",
        "upstream request build: body + request",
        "open_event_stream + SSEUpstream (open_stream own)",
        False,
    ),
    (
        "gateway.providers.requests",
        "UpstreamRequests.stream",
        "encode request bytes (UpstreamRequests.stream)",
        "upstream request build: body + request",
        False,
    ),
    (
        "gateway.transports.native",
        "NativeTransport.handle_async_request",
        NATIVE,
        "open_event_stream + SSEUpstream (open_stream own)",
        True,
    ),
    (
        "gateway.transports.native",
        "NativeTransport.send_raw",
        NATIVE,
        "open_event_stream + SSEUpstream (open_stream own)",
        True,
    ),
    (
        "gateway.transports.native",
        "encode",
        "encode request bytes (http11.encode)",
        NATIVE,
        False,
    ),
    ("gateway.transports.native", "NativeTransport._take", "pool checkout", NATIVE, False),
    ("gateway.transports.native", "NativeTransport._connect", "upstream connect", NATIVE, True),
    (
        "gateway.transports.http11",
        "Connection.send",
        "upstream socket write (Connection.send)",
        NATIVE,
        True,
    ),
    (
        "gateway.providers.streams",
        "SSEUpstream.__anext__",
        "first event read: SSE decode + translate",
        "first-token timeout scope (_open_first own)",
        True,
    ),
    (
        "gateway.relay.stream",
        "Relay._relay",
        "relay of the chunks and the end (without uvicorn send)",
        "Relay.stream own",
        True,
    ),
    (
        "gateway.relay.stream",
        "Relay._finish",
        "relay: the end (Relay._finish, with its uvicorn send)",
        "Relay.stream own",
        False,
    ),
    (
        "gateway.transports.http11",
        "Connection.data_received",
        "upstream bytes in: head + body parse (callback)",
        None,
        False,
    ),
    (
        "gateway.observability.finished",
        "Finished._slice",
        "records: Finished._slice (callback)",
        None,
        False,
    ),
    (
        "gateway.observability.metrics",
        "Metrics.record",
        "records: metrics (Metrics.record)",
        "records: Finished._slice (callback)",
        False,
    ),
    (
        "gateway.observability.requestlog",
        "RequestLog.submit",
        "records: request log submit",
        "records: Finished._slice (callback)",
        False,
    ),
    (
        "gateway.observability.requestlog",
        "RequestLog._render",
        "records: request log render",
        "records: request log submit",
        False,
    ),
    (
        "gateway.observability.requestlog",
        "RequestLog._write_batch",
        "request log file write (its thread)",
        None,
        False,
    ),
]
REQUESTS = "request id, RequestRecord, endpoint frame"
SEND = "uvicorn send: start, body, end (without the socket write)"
SYNC_CALLS = " (sync calls)"
"""Appended to a label's key in the call counts for the calls of its sync probes when the
label also has async ones (`uvicorn send`): each kind of probe costs its own."""


class _Timed:
    """Awaits `coro`, adding the thread CPU time of each of its resumptions to `key`."""

    __slots__ = ("coro", "key")

    def __init__(self, coro: Any, key: str) -> None:
        self.coro, self.key = coro, key

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, total = self.coro, 0
        val: Any = None
        exc: BaseException | None = None
        try:
            while True:
                t = tt()
                try:
                    y = coro.send(val) if exc is None else coro.throw(exc)
                except StopIteration as e:
                    total += tt() - t
                    return e.value
                except BaseException:
                    total += tt() - t
                    raise
                total += tt() - t
                try:
                    val, exc = (yield y), None
                except BaseException as e:
                    val, exc = None, e
        finally:
            NS[self.key] += total
            N[self.key] += 1


def _probe(
    f: Callable[..., Any], key: str, is_async: bool, count: str | None = None
) -> Callable[..., Any]:
    calls = key if count is None else count
    if is_async:

        @functools.wraps(f)
        async def timed_async(*a: Any, **kw: Any) -> Any:
            return await _Timed(f(*a, **kw), key)

        return timed_async

    @functools.wraps(f)
    def timed(*a: Any, **kw: Any) -> Any:
        t = tt()
        try:
            return f(*a, **kw)
        finally:
            NS[key] += tt() - t
            N[calls] += 1

    return timed


def install(strict: bool = True) -> None:
    """Wrap every step in `PROBES` (before the app is built) and dump the sums at exit. Not
    `strict` (a probed tree: perhaps an older checkout's code), a step whose function the
    code does not have is left out, and said so on stderr."""
    mixed = {p[2] for p in PROBES if p[4]} & {p[2] for p in PROBES if not p[4]}
    for module, path, key, _, is_async in PROBES:
        owner: Any = importlib.import_module(module)
        *outer, name = path.split(".")
        for part in outer:
            owner = getattr(owner, part)
        if not strict and not hasattr(owner, name):
            print(f"step_probe: no {module}.{path} here, not probed", file=sys.stderr)
            continue
        count = key + SYNC_CALLS if key in mixed and not is_async else key
        setattr(owner, name, _probe(getattr(owner, name), key, is_async, count))
    # The relayed routes took `parse_request` as a default argument when defined.
    completions: Any = importlib.import_module("gateway.edge.completions")
    parse = importlib.import_module("gateway.edge.requests").parse_request
    defaults = completions.RelayEndpoint.__init__.__defaults__
    completions.RelayEndpoint.__init__.__defaults__ = (parse, *defaults[1:])
    started = [0]

    def collector(phase: str, _info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = tt()
        else:
            NS["garbage collector"] += tt() - started[0]

    gc.callbacks.append(collector)
    out = Path(os.environ.get("STEP_PROBE_DIR", Path.cwd()))
    atexit.register(lambda: (out / f"steps-{os.getpid()}.json").write_text(json.dumps([NS, N])))


def own_times(ns: dict[str, int], n: dict[str, int]) -> dict[str, float]:
    """Each label's own µs per request, the probes' cost taken out."""
    requests = n[REQUESTS]
    asyncs = {key for _, _, key, _, is_async in PROBES if is_async}

    def calls(key: str) -> float:
        return (n.get(key, 0) + n.get(key + SYNC_CALLS, 0)) / requests

    def outside(key: str) -> float:
        """The probes' own cost around `key`'s calls, per request."""
        first = ASYNC_OUT if key in asyncs else SYNC_OUT
        return (n.get(key, 0) * first + n.get(key + SYNC_CALLS, 0) * SYNC_OUT) / requests

    own = {key: ns[key] / requests / 1000 - calls(key) * INSIDE for key in ns}
    parents = {key: parent for _, _, key, parent, _ in PROBES}
    for key, parent in parents.items():
        if parent is None or key not in ns:
            continue
        own[parent] = own.get(parent, 0.0) - ns[key] / requests / 1000 - outside(key)
    # uvicorn's send (or the body writer's start and end in its stead) runs inside the
    # relay (the start and first event) and `Relay._finish` (the end), not as a child of
    # the app entry's own code. All three are taken from the relay's label
    # (the end's included, which `Relay._finish`'s own label still holds): the two labels'
    # sum is the relay's own time.
    if SEND in ns:
        relay = "relay of the chunks and the end (without uvicorn send)"
        send = ns[SEND] / requests / 1000 + outside(SEND)
        own[relay] = own.get(relay, 0.0) - send
        app = "ASGI app entry + routing (run_asgi, GatewayApp)"
        own[app] = own.get(app, 0.0) + send
    return own


def show(files: list[str]) -> str:
    runs = []
    for name in files:
        ns, n = json.loads(Path(name).read_text())
        runs.append(own_times(ns, n))
    labels = sorted({k for r in runs for k in r}, key=lambda k: -sum(r.get(k, 0) for r in runs))
    totals = [sum(r.values()) for r in runs]
    lines = ["| step | µs of CPU per request (each run) | share |", "| --- | --- | --- |"]
    for label in labels:
        values = [r.get(label, 0.0) for r in runs]
        share = sum(values) / sum(totals)
        lines.append(f"| {label} | {' / '.join(f'{v:.1f}' for v in values)} | {share:.1%} |")
    lines.append(f"| sum of the probed steps | {' / '.join(f'{t:.0f}' for t in totals)} | 100% |")
    return "\n".join(lines)


def make_tree(dest: Path) -> None:
    archive = subprocess.run(
        ["git", "archive", "HEAD", "gateway"], cwd=REPO, check=True, capture_output=True
    ).stdout
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    (dest / "gateway" / "__main__.py").write_text(
        "from bench.step_probe import install\n\ninstall(strict=False)\n"
        "from gateway.cli import main  # noqa: E402\n\nraise SystemExit(main())\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.step_probe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("tree", help="write a probed copy of gateway/ under DIR").add_argument(
        "dir", type=Path
    )
    sub.add_parser("show", help="the table of one or more dumps").add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "tree":
        make_tree(args.dir)
    else:
        print(show(args.files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
