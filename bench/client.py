"""The benchmark's load generator: many SSE streams, each checked event by event.

Run by the orchestrator (`bench.run`) as its own process, so its CPU is not the relay's:
`python -m bench.client --url URL --key KEY --model bench-n50-p20 --streams 500
--concurrency 500 --fresh`. It opens `concurrency` workers; each runs streams one after
another on one keep-alive connection (or a fresh connection per stream with `--fresh`,
which is what a burst of new users looks like). Warm-up streams run first; then it prints
`ready`, waits for `go` on stdin (the orchestrator samples process CPU in between), runs
the measured streams and prints one JSON line of results.

It is a raw asyncio protocol with httptools' C parser and a minimal SSE scan (one `find`
per event, no JSON decoding), so it stays far from being the bottleneck. Every stream is
checked: content chunks ` tok0`, ` tok1`, ... arrive in order, each once, every event
belongs to this stream (the chunk id carries the stream id sent as `user`), then a finish
reason, the usage chunk, `[DONE]` last. Any deviation is an integrity failure; a refused
request, a broken connection, an error event or a timeout is an error.

`--api responses` / `--api messages` call /v1/responses or /v1/messages instead
(`ApiConnection`): the text deltas ` tok0`, ` tok1`, ... must arrive in order, each once,
then the usage and the API's end event (`response.completed`, `message_stop`), nothing
after it. Their answers carry ids the gateway makes when it translates, so the stream id
is not checked there.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, cast
from urllib.parse import urlsplit

import httptools
import orjson
import uvloop

from bench.procs import raise_nofile

_TOKEN = b'"content":" tok'
_FINISH = b'"finish_reason":"stop"'
_USAGE = b'"choices":[],"usage":{'
_DONE = b"data: [DONE]"
_ROLE_ONLY = b'"delta":{"role":"assistant","content":""}'


@dataclass
class Totals:
    streams: int = 0
    ok: int = 0
    events: int = 0
    errors: int = 0
    integrity: int = 0
    ttft: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)

    def problem(self, kind: str, what: str) -> None:
        if kind == "integrity":
            self.integrity += 1
        else:
            self.errors += 1
        if len(self.samples) < 5:
            self.samples.append(f"{kind}: {what}")


class Connection(asyncio.Protocol):
    """One HTTP/1.1 connection carrying one stream at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._parser = httptools.HttpResponseParser(self)
        self._done: asyncio.Future[None] | None = None
        self._now = 0.0
        self._buf = b""
        self._reset(b"", 0)

    def _reset(self, prefix: bytes, n: int) -> None:
        self.prefix = prefix
        self.n = n
        self.next = 0
        self.events = 0
        self.finished = self.usage = self.done = False
        self.failure: str | None = None
        self.error: str | None = None
        self.status = 0
        self.keep_alive = True
        self.started = self.first = self.last = 0.0
        self.gaps: list[float] = []
        self._buf = b""

    async def stream(self, request: bytes, prefix: bytes, n: int, started: float) -> None:
        """Send one request and take in its whole answer (raises on a broken connection)."""
        assert self.transport is not None
        self._reset(prefix, n)
        self.started = started
        self._done = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        await self._done

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._now = perf_counter()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._finish(ConnectionError(f"bad HTTP from the server: {exc}"))
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._finish(ConnectionError(f"connection closed mid-stream ({exc or 'EOF'})"))

    def _finish(self, exc: Exception | None = None) -> None:
        done = self._done
        if done is not None and not done.done():
            if exc is None:
                done.set_result(None)
            else:
                done.set_exception(exc)

    # --- httptools callbacks ------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive()

    def on_message_complete(self) -> None:
        self._finish()

    def on_body(self, body: bytes) -> None:
        if self.status != 200:
            if self.error is None:
                self.error = f"HTTP {self.status}: {body[:200]!r}"
            return
        buf = self._buf + body if self._buf else body
        now = self._now
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            self._event(buf[start:end], now)
            start = end + 2
        self._buf = buf[start:]

    def _event(self, event: bytes, now: float) -> None:
        if event.startswith(b":"):
            return  # an SSE comment (keep-alive)
        self.events += 1
        if self.done:
            self._fail(f"an event after [DONE]: {event[:80]!r}")
        elif event.startswith(self.prefix):
            at = event.find(_TOKEN, len(self.prefix))
            if at >= 0:
                at += len(_TOKEN)
                index = int(event[at : event.index(b'"', at)])
                if index != self.next:
                    self._fail(f"chunk {index} where chunk {self.next} was due")
                self.next = index + 1
                if self.last:
                    self.gaps.append(now - self.last)
                else:
                    self.first = now
                self.last = now
            elif _FINISH in event:
                self.finished = True
            elif _USAGE in event:
                self.usage = True
            elif _ROLE_ONLY in event:
                pass  # a translating provider's opening chunk (`chat -> messages`)
            else:
                self._fail(f"an unexpected event: {event[:120]!r}")
        elif event == _DONE:
            self.done = True
        elif event.startswith(b'data: {"error"'):
            self.error = self.error or f"error event: {event[:200]!r}"
        else:
            self._fail(f"an event of another stream or unknown shape: {event[:120]!r}")

    def _fail(self, what: str) -> None:
        if self.failure is None:
            self.failure = what

    def verdict(self) -> tuple[str, str] | None:
        """None for a whole stream, else (kind, what went wrong)."""
        if self.error is not None:
            return "error", self.error
        if self.failure is not None:
            return "integrity", self.failure
        if self.next != self.n:
            return "integrity", f"{self.next} of {self.n} chunks"
        if not (self.finished and self.usage and self.done):
            seen = {"finish": self.finished, "usage": self.usage, "[DONE]": self.done}
            missing = [name for name, arrived in seen.items() if not arrived]
            return "integrity", f"no {', '.join(missing)}"
        return None


_API_MARKS = {
    # api: (text delta, usage, end event, failure)
    "responses": (
        b'"delta":" tok',
        b'"usage":{"input_tokens"',
        b"event: response.completed",
        b"response.failed",
    ),
    "messages": (b'"text":" tok', b'"output_tokens"', b"event: message_stop", b"event: error"),
}


class ApiConnection(Connection):
    """A connection checking a Responses or Messages stream (see the module docstring)."""

    api = "responses"

    def _event(self, event: bytes, now: float) -> None:
        if event.startswith(b":"):
            return
        self.events += 1
        token, usage, end, failure = _API_MARKS[self.api]
        if self.done:
            self._fail(f"an event after the end: {event[:80]!r}")
            return
        at = event.find(token)
        if at >= 0:
            at += len(token)
            index = int(event[at : event.index(b'"', at)])
            if index != self.next:
                self._fail(f"chunk {index} where chunk {self.next} was due")
            self.next = index + 1
            if self.last:
                self.gaps.append(now - self.last)
            else:
                self.first = now
            self.last = now
            return
        if usage in event:
            self.usage = self.finished = True
        if event.startswith(end):
            self.done = True
        elif failure in event:
            self.error = self.error or f"error event: {event[:200]!r}"


@dataclass
class Plan:
    host: str
    port: int
    key: str
    model: str
    n: int
    streams: int
    concurrency: int
    fresh: bool
    timeout: float
    run_id: str
    api: str = "chat"


def _request(plan: Plan, stream_id: str) -> bytes:
    if plan.api != "chat":
        return _api_request(plan, stream_id)
    body = orjson.dumps(
        {
            "model": plan.model,
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "Count for the benchmark, please."}],
            "max_tokens": plan.n + 16,
            "user": stream_id,
        }
    )
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: {plan.host}:{plan.port}\r\n"
        f"authorization: Bearer {plan.key}\r\ncontent-type: application/json\r\n"
        f"accept: text/event-stream\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _api_request(plan: Plan, stream_id: str) -> bytes:
    text = "Count for the benchmark, please."
    if plan.api == "responses":
        path = "/v1/responses"
        payload: dict[str, Any] = {"input": text, "max_output_tokens": plan.n + 16}
        payload["user"] = stream_id
    else:
        path = "/v1/messages"
        payload = {"messages": [{"role": "user", "content": text}], "max_tokens": plan.n + 16}
        payload["metadata"] = {"user_id": stream_id}
    body = orjson.dumps({"model": plan.model, "stream": True, **payload})
    head = (
        f"POST {path} HTTP/1.1\r\nhost: {plan.host}:{plan.port}\r\n"
        f"x-api-key: {plan.key}\r\ncontent-type: application/json\r\n"
        f"accept: text/event-stream\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _connection(api: str) -> Connection:
    if api == "chat":
        return Connection()
    conn = ApiConnection()
    conn.api = api
    return conn


async def _worker(plan: Plan, worker: int, count: int, totals: Totals) -> None:
    loop = asyncio.get_running_loop()
    conn: Connection | None = None
    for seq in range(count):
        stream_id = f"{plan.run_id}-{worker}-{seq}"
        request = _request(plan, stream_id)
        prefix = b'data: {"id":"chatcmpl-' + stream_id.encode() + b'"'
        started = perf_counter()
        totals.streams += 1
        try:
            async with asyncio.timeout(plan.timeout):
                if conn is None or conn.closed or plan.fresh:
                    if conn is not None and conn.transport is not None:
                        conn.transport.close()
                    _, conn = await loop.create_connection(
                        lambda: _connection(plan.api), plan.host, plan.port
                    )
                await conn.stream(request, prefix, plan.n, started)
        except (OSError, TimeoutError) as exc:
            totals.problem("error", f"{type(exc).__name__}: {exc}")
            if conn is not None and conn.transport is not None:
                conn.transport.close()
            conn = None
            continue
        totals.events += conn.events
        verdict = conn.verdict()
        if verdict is not None:
            totals.problem(*verdict)
        else:
            totals.ok += 1
        if conn.first:
            totals.ttft.append(conn.first - started)
        totals.gaps.extend(conn.gaps)
        if not conn.keep_alive:
            conn = None
    if conn is not None and conn.transport is not None:
        conn.transport.close()


async def run_streams(plan: Plan, deadline: float) -> Totals:
    """Run the plan's streams; whatever is not done after `deadline` seconds counts as
    errors (so a stuck target costs the run a bounded time, never a hang)."""
    totals = Totals()
    per_worker, extra = divmod(plan.streams, plan.concurrency)
    counts = [per_worker + (w < extra) for w in range(plan.concurrency)]
    try:
        async with asyncio.timeout(deadline), asyncio.TaskGroup() as group:
            for worker, count in enumerate(counts):
                if count:
                    group.create_task(_worker(plan, worker, count, totals))
    except TimeoutError:
        unfinished = plan.streams - totals.ok - totals.errors - totals.integrity
        totals.errors += unfinished
        totals.samples.append(f"error: {unfinished} streams unfinished after {deadline:g} s")
    return totals


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not values:
        return None
    rank = max(1, min(len(values), round(q / 100 * len(values) + 0.5)))
    return values[rank - 1]


def summary(totals: Totals, wall: float, cpu: float, raw: bool = False) -> dict[str, Any]:
    """The run in numbers; `raw` adds every TTFT and gap, for the orchestrator to take
    percentiles over several client processes (`merge`)."""
    ttft, gaps = sorted(totals.ttft), sorted(totals.gaps)
    extra = {"ttft": ttft, "gaps": gaps} if raw else {}
    return {
        "streams": totals.streams,
        "ok": totals.ok,
        "errors": totals.errors,
        "integrity": totals.integrity,
        "samples": totals.samples,
        "events": totals.events,
        "wall_s": wall,
        "client_cpu_s": cpu,
        "ttft_p50": percentile(ttft, 50),
        "ttft_p99": percentile(ttft, 99),
        "gap_p50": percentile(gaps, 50),
        "gap_p99": percentile(gaps, 99),
        **extra,
    }


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One result for the client processes that shared a run (each with `raw` samples):
    counts and CPU add up, the wall time is the longest, percentiles are over all samples."""
    totals = Totals(
        streams=sum(p["streams"] for p in parts),
        ok=sum(p["ok"] for p in parts),
        events=sum(p["events"] for p in parts),
        errors=sum(p["errors"] for p in parts),
        integrity=sum(p["integrity"] for p in parts),
        ttft=[t for p in parts for t in p["ttft"]],
        gaps=[g for p in parts for g in p["gaps"]],
        samples=[s for p in parts for s in p["samples"]][:5],
    )
    wall = max(p["wall_s"] for p in parts)
    return summary(totals, wall, sum(p["client_cpu_s"] for p in parts))


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _chunks(model: str) -> int:
    """The content chunks a bench model streams: `[prefix-]bench-n<chunks>-p<pace ms>`."""
    return int(model.split("bench-n")[1].split("-")[0])


async def main_async(args: argparse.Namespace) -> None:
    url = urlsplit(args.url)
    plan = Plan(
        host=url.hostname or "127.0.0.1",
        port=url.port or 80,
        key=args.key,
        model=args.model,
        n=_chunks(args.model),
        streams=args.streams,
        concurrency=min(args.concurrency, args.streams),
        fresh=args.fresh,
        timeout=args.timeout,
        run_id=f"{os.getpid()}{int(time.time() * 1000) % 100000}",
        api=args.api,
    )
    if args.warmup:
        model = args.warmup_model or plan.model
        warm = Plan(
            **{
                **plan.__dict__,
                "model": model,
                "n": _chunks(model),
                "streams": args.warmup,
                "run_id": plan.run_id + "w",
            }
        )
        warm.concurrency = min(plan.concurrency, args.warmup)
        totals = await run_streams(warm, args.deadline)
        if totals.ok != totals.streams:
            print(orjson.dumps({"warmup_failed": summary(totals, 0.0, 0.0)}).decode(), flush=True)
            return
    print("ready", flush=True)
    if args.wait_go:
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        if line.strip() != "go":
            return
    cpu, started = _cpu(), perf_counter()
    totals = await run_streams(plan, args.deadline)
    wall = perf_counter() - started
    print(orjson.dumps(summary(totals, wall, _cpu() - cpu, args.raw)).decode(), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="SSE load generator for the benchmark")
    parser.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--key", default="none")
    parser.add_argument("--model", required=True, help="[prefix-]bench-n<chunks>-p<pace ms>")
    parser.add_argument(
        "--api", default="chat", choices=("chat", "responses", "messages"), help="the API called"
    )
    parser.add_argument("--streams", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--fresh", action="store_true", help="a new connection per stream")
    parser.add_argument("--warmup", type=int, default=0, help="streams to run before `ready`")
    parser.add_argument(
        "--warmup-model", default="", help="the warm-up streams' model (default: --model)"
    )
    parser.add_argument("--wait-go", action="store_true", help="wait for `go` on stdin")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per stream")
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds for the run")
    parser.add_argument("--raw", action="store_true", help="print every TTFT and gap too")
    raise_nofile()
    uvloop.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
