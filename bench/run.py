"""`python -m bench`: the gateway against a direct connection, a bare relay and nginx, one table.

One command, loopback only, bounded in time. It starts a fast fake upstream
(`bench.upstream`), a throwaway redis-server, the floor (`bench.floor`: a bare aiohttp
byte relay), nginx as a reference relay (when installed: one worker process, the repo's
streaming proxy directives from nginx/gateway.conf, its config written to the run's tmp
directory by `bench.procs.nginx_service`; its CPU and RSS are master + worker) and
`gateway serve` with everything on (a key whose limits run through Redis's
Lua path on every request, metrics, a request log file): one per upstream transport
compared (native, aiohttp, httpx) plus one on asyncio + h11 instead of uvloop + httptools.
Then, for each scenario and target, a load generator process (`bench.client`) runs the
streams and checks every one of them, while this process reads the relay's CPU time (user +
system, psutil) around the measured window and samples its RSS every 100 ms.

Scenarios (the issue's): `latency` (1 stream at a time, 300 streams of 20 chunks),
`throughput` (64 concurrent streams of 200 chunks, 10 rounds), `paced` (500 concurrent
streams of 50 chunks 20 ms apart, each on a new connection), `scale` (3,000 concurrent
streams of 20 chunks 200 ms apart, all arriving at once, each on a new connection: the
slow, long streams of reasoning models and a burst of new users; about 10 s per target
and repeat). "Chunks" are SSE events as the client receives them: content chunks plus the
finish, usage and [DONE] events. On demand only: `requests` (what setting up a request
costs) and `soak-scale` (5,000 streams held open `--hold-minutes`, 3 by default, a chunk
every 1.5 s; run once per target, with the relay's RSS every 10 s printed). Scenarios run
in that order, however they are named (a relay keeps the memory it grew for 3,000 streams).
The scale scenarios skip the compared transports and the asyncio+h11 server (httpx's pool
times out there: 30 s a run, for nothing learnt); candidates and worker counts still run.

The scale scenarios split their streams over `--client-procs` load generator processes (2:
with 1 the generator was the bottleneck, 4 did no better; docs/performance.md), which warm
up apart and start together; their TTFTs and gaps are merged before taking percentiles.
Every process raises its open-file limit to the hard limit. Besides TTFT, gaps, CPU per 1k
chunks and peak RSS (sampled every 100 ms), each row shows the relay's RSS per open stream
((peak - idle before the run) / streams open at once, for 500+ streams), each process's
peak core use (CPU over 250 ms windows: relay, upstream, the busiest client) and the
kernel's listen drops (connections dropped at a full accept queue; they retry 1 s later).

`--workers N` runs the gateway targets as `gateway serve --workers N` (CPU and RSS summed
over the workers and the supervisor); `--gateway-workers 1,2` runs the judged gateway with
each worker count side by side.

Each scenario runs `--repeat` times (3), going round the targets each time so that a noisy
moment on a shared machine hits them all; the table shows medians (latencies) and totals
(rates, CPU per chunk). The "others CPU" column is what the rest of the machine used
meanwhile: when it is high, the numbers are noisy. `--candidate DIR` runs another
checkout's `gateway` package side by side (A/B of a change); `--profile SCENARIO` records
the judged gateway with py-spy.

`--routes` (on by default) then times the gateway's ingress APIs against each other on
one more gateway (native transport) whose providers speak Chat, Anthropic Messages and
the Responses API (`bench.upstream` serves all three): every route (client API -> upstream
API, pass-through or translated) in the latency and throughput shapes, with the TTFT and
CPU each adds against Chat Completions pass-through.

Deliberately not here: saving results between runs or plotting; the table is the output.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, get_args

import orjson
import psutil  # type: ignore[import-untyped]  # no stubs in the dev dependencies
import yaml

from bench import report
from bench.client import merge
from bench.otlp_sink import sink_stats, tracing_variant_config
from bench.procs import (
    BENCH_KEY,
    REPO,
    Sampler,
    Service,
    free_port,
    gateway_config,
    nginx_available,
    nginx_service,
    python_service,
    raise_nofile,
    redis_command,
    redis_service,
)
from bench.rawfloor import RUNGS
from gateway.config import Transport


@dataclass(frozen=True)
class Scenario:
    name: str
    model: str
    streams: int
    concurrency: int
    fresh: bool
    warmup: int
    what: str
    api: str = "chat"
    """The API the client calls (`--routes`)."""
    procs: int = 1
    """Client processes sharing the streams (the scale scenarios: one process would be the
    bottleneck, not the relay)."""
    timeout: float = 60.0
    """Seconds a stream may take (the client's `--timeout`)."""
    deadline: float = 120.0
    """Seconds the measured run may take (the client's `--deadline`)."""
    repeat: int | None = None
    """Runs per target, when not `--repeat` (soak-scale: one, it takes minutes)."""
    warmup_model: str = ""
    """The warm-up streams' model when not `model` (short streams, for slow scenarios)."""
    variants: bool = True
    """Also run the compared transports and the asyncio+h11 server (False for thousands of
    streams: the time would go to httpx's pool timing out, 30 s a run)."""


SCALE_PROCS = 2
"""Client processes of the scale scenarios: enough that direct access (the generator and
the fake upstream alone) keeps TTFT and gaps near the ideal (docs/performance.md)."""


def scenarios(
    rounds: int, hold_minutes: float = 3.0, procs: int = SCALE_PROCS
) -> dict[str, Scenario]:
    """The issue's scenarios, and `requests` and `soak-scale` (run only when named: what
    setting up one request costs; thousands of streams held for minutes); `rounds` sets how
    many streams each throughput worker runs back to back (more rounds, a longer and
    steadier measurement), `hold_minutes` how long soak-scale's streams last, `procs` how
    many client processes generate the scale scenarios' load."""
    latency = Scenario(
        name="latency",
        model="bench-n20-p0",
        streams=300,
        concurrency=1,
        fresh=False,
        warmup=20,
        what="1 stream at a time, 300 streams of 20 chunks, no upstream delay",
    )
    throughput = Scenario(
        name="throughput",
        model="bench-n200-p0",
        streams=64 * rounds,
        concurrency=64,
        fresh=False,
        warmup=64,
        what=f"64 concurrent streams of 200 chunks ({rounds} rounds), no upstream delay",
    )
    paced = Scenario(
        name="paced",
        model="bench-n50-p20",
        streams=500,
        concurrency=500,
        fresh=True,
        warmup=20,
        what="500 concurrent streams of 50 chunks 20 ms apart, a new connection each",
    )
    requests = Scenario(
        name="requests",
        model="bench-n1-p0",
        streams=5000,
        concurrency=32,
        fresh=True,
        warmup=200,
        what="5000 one-chunk streams, 32 at a time, a new connection each (on demand; "
        "4 events a stream, so CPU per 1k chunks times 4 is CPU µs per request)",
    )
    scale = Scenario(
        name="scale",
        model="bench-n20-p200",
        streams=3000,
        concurrency=3000,
        fresh=True,
        warmup=20,
        what=f"3000 concurrent streams of 20 chunks 200 ms apart, arriving at once, a new "
        f"connection each ({procs} client processes)",
        procs=procs,
        warmup_model="bench-n5-p20",
        variants=False,
    )
    pace_ms = 1500
    chunks = max(2, round(hold_minutes * 60_000 / pace_ms))
    soak_scale = Scenario(
        name="soak-scale",
        model=f"bench-n{chunks}-p{pace_ms}",
        streams=5000,
        concurrency=5000,
        fresh=True,
        warmup=20,
        what=f"5000 concurrent streams held {hold_minutes:g} min ({chunks} chunks "
        f"{pace_ms} ms apart), a new connection each ({procs} client processes; on demand)",
        procs=procs,
        warmup_model="bench-n5-p20",
        variants=False,
        timeout=hold_minutes * 60 + 60,
        deadline=hold_minutes * 60 + 120,
        repeat=1,
    )
    return {s.name: s for s in (latency, throughput, paced, scale, requests, soak_scale)}


@dataclass
class Target:
    name: str
    label: str
    service: Service | None
    """The relay process measured; None for direct access (the upstream itself)."""
    url: str


@dataclass
class Result:
    target: str
    scenario: str
    client: dict[str, Any]
    relay_cpu_s: float | None
    upstream_cpu_s: float
    peak_rss: int | None
    others_cpu_s: float
    """CPU time the rest of the machine used in the window (other processes' noise)."""
    steal_s: float = 0.0
    """CPU time the hypervisor gave to other guests in the window (a virtual machine's
    noise: the processes here ran slower by about that much)."""
    idle_rss: int | None = None
    """The relay's RSS just before the measured streams (after the warm-up)."""
    run_peak_rss: int | None = None
    """The relay's peak RSS in the same run as `idle_rss`: what RSS per open stream counts
    from. (`peak_rss` of a row combining repeats is the highest of any run, which includes
    what the runs before left behind; `idle_rss` is from one run only.)"""
    concurrency: int = 0
    """Streams open at once."""
    core_peak: dict[str, float] = field(default_factory=dict)
    """Each process group's highest core use over 250 ms windows: relay, upstream, client
    (the busiest client process)."""
    rss_timeline: list[tuple[float, int]] = field(default_factory=list)
    """The relay's RSS every 10 s of the run."""
    listen_drops: int = 0
    """Connections the kernel dropped in the window because a listening socket's accept
    queue was full (TcpExt ListenDrops, the whole machine): each one costs its client a
    SYN retransmit, 1 s and then 3 s later."""

    @property
    def events(self) -> int:
        return int(self.client["events"])

    @property
    def chunks_per_s(self) -> float:
        return self.events / self.client["wall_s"] if self.client["wall_s"] else 0.0

    @property
    def rss_per_stream(self) -> float | None:
        """Bytes of relay RSS per open stream: (peak - idle before) / streams open at once,
        both from one run."""
        if self.run_peak_rss is None or self.idle_rss is None or not self.concurrency:
            return None
        return (self.run_peak_rss - self.idle_rss) / self.concurrency

    @property
    def cpu_ms_per_1k(self) -> float | None:
        if self.relay_cpu_s is None or not self.events:
            return None
        return self.relay_cpu_s * 1e6 / self.events


def _client_cmd(target: Target, scenario: Scenario, share: int, of: int) -> list[str]:
    """Client process `share` of `of`: its part of the streams, workers and warm-up."""

    def part(n: int) -> int:
        return n // of + (share < n % of)

    cmd = [
        sys.executable, "-m", "bench.client",
        "--url", target.url,
        "--key", BENCH_KEY,
        "--model", scenario.model,
        "--streams", str(part(scenario.streams)),
        "--concurrency", str(max(1, part(scenario.concurrency))),
        "--warmup", str(part(scenario.warmup)),
        "--timeout", f"{scenario.timeout:g}",
        "--deadline", f"{scenario.deadline:g}",
        "--wait-go",
    ]  # fmt: skip
    if scenario.fresh:
        cmd.append("--fresh")
    if scenario.api != "chat":
        cmd += ["--api", scenario.api]
    if scenario.warmup_model:
        cmd += ["--warmup-model", scenario.warmup_model]
    if of > 1:
        cmd.append("--raw")
    return cmd


def run_client(
    target: Target,
    scenario: Scenario,
    upstream: Service,
    services: list[Service],
    tmp: Path,
    timeout: float,
    profile: Path | None = None,
) -> Result:
    """One measured run: `scenario.procs` client processes warm up, then all start at once
    on `go`; the relay's and the upstream's CPU is read around the run, RSS and each
    process's core use sampled during it."""
    timeout = max(timeout, scenario.deadline + 60)
    procs: list[subprocess.Popen[bytes]] = []
    errlogs: list[Path] = []
    for n in range(scenario.procs):
        errlog = tmp / f"client-{target.name}-{scenario.name}-{n}.err"
        errlogs.append(errlog)
        with open(errlog, "wb") as err:
            procs.append(
                subprocess.Popen(
                    _client_cmd(target, scenario, n, scenario.procs),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    cwd=REPO,
                )
            )
    # The client bounds its own run (--deadline); this is the backstop if it hangs anyway.
    watchdogs = [threading.Timer(timeout, proc.kill) for proc in procs]
    for watchdog in watchdogs:
        watchdog.start()
    try:
        for proc, errlog in zip(procs, errlogs, strict=True):
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if line != b"ready":
                raise RuntimeError(
                    f"client for {target.name}/{scenario.name} failed its warm-up: "
                    f"{line.decode(errors='replace')[:1000]} {errlog.read_text()[-1000:]}"
                )
        relay = target.service
        groups: dict[str, Callable[[], list[psutil.Process]]] = {"upstream": upstream.processes}
        if relay is not None:
            groups["relay"] = relay.processes
        for n, proc in enumerate(procs):
            groups[f"client{n}"] = functools.partial(list, [psutil.Process(proc.pid)])
        with Sampler(relay, groups) as sampler:
            relay_cpu = relay.cpu_seconds() if relay else 0.0
            upstream_cpu = upstream.cpu_seconds()
            ours = sum(s.cpu_seconds() for s in services)
            machine = _busy_seconds()
            steal = _steal_seconds()
            drops = _listen_drops()
            spy = _start_profiler(relay, profile) if profile else None
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write(b"go\n")
                proc.stdin.flush()
            outs = [proc.stdout.readline() for proc in procs if proc.stdout is not None]
            if spy is not None:
                _stop_profiler(spy)
            if not all(outs):
                raise RuntimeError(f"client for {target.name}/{scenario.name} gave no result")
            # Work the requests left behind (request log batches, Redis settles) belongs
            # to them; it finishes within a few event-loop turns.
            time.sleep(0.25)
            relay_cpu = relay.cpu_seconds() - relay_cpu if relay else 0.0
            upstream_cpu = upstream.cpu_seconds() - upstream_cpu
            ours = sum(s.cpu_seconds() for s in services) - ours
            machine = _busy_seconds() - machine
            steal = _steal_seconds() - steal
            drops = _listen_drops() - drops
        for proc in procs:
            proc.wait(10)
    finally:
        for watchdog in watchdogs:
            watchdog.cancel()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
    parts = [orjson.loads(out) for out in outs]
    client = parts[0] if len(parts) == 1 else merge(parts)
    cores = {name: share for name, share in sampler.core_peak.items() if name[:6] != "client"}
    cores["client"] = max(v for k, v in sampler.core_peak.items() if k.startswith("client"))
    return Result(
        target=target.name,
        scenario=scenario.name,
        client=client,
        relay_cpu_s=relay_cpu if relay else None,
        upstream_cpu_s=upstream_cpu,
        peak_rss=sampler.peak if relay else None,
        others_cpu_s=max(0.0, machine - ours - client["client_cpu_s"]),
        steal_s=steal,
        idle_rss=sampler.idle if relay else None,
        run_peak_rss=sampler.peak if relay else None,
        # RSS per open stream only where many streams are open at once (paced, scale):
        # with 64 streams, warm-up and other runs' heap growth would be most of it.
        concurrency=scenario.concurrency if scenario.concurrency >= 500 else 0,
        core_peak=cores,
        rss_timeline=sampler.timeline,
        listen_drops=drops,
    )


def combine(runs: list[Result]) -> Result:
    """One row for repeated runs: latency percentiles are the runs' medians, rates and CPU
    per chunk come from the totals, RSS is the highest seen, problems add up."""
    if len(runs) == 1:
        return runs[0]
    first = runs[0]
    client: dict[str, Any] = {}
    for key in ("streams", "ok", "errors", "integrity", "events", "wall_s", "client_cpu_s"):
        client[key] = sum(r.client[key] for r in runs)
    for key in ("ttft_p50", "ttft_p99", "gap_p50", "gap_p99"):
        values = [r.client[key] for r in runs if r.client[key] is not None]
        client[key] = statistics.median(values) if values else None
    client["samples"] = [s for r in runs for s in r.client["samples"]][:5]
    cpus = [r.relay_cpu_s for r in runs]
    rss = [r.peak_rss for r in runs]
    # RSS per stream: the run that grew the most from its own idle RSS (the first, usually:
    # later runs reuse the memory it grew). Not the highest peak of all runs minus the first
    # run's idle: that counts every run's leftovers (heap the allocators keep, garbage not
    # yet collected) as if the streams of one run held them.
    highest = max(runs, key=lambda r: r.rss_per_stream or 0.0)
    cores = {name: max(r.core_peak.get(name, 0.0) for r in runs) for name in first.core_peak}
    return Result(
        target=first.target,
        scenario=first.scenario,
        client=client,
        relay_cpu_s=None if None in cpus else sum(c or 0.0 for c in cpus),
        upstream_cpu_s=sum(r.upstream_cpu_s for r in runs),
        peak_rss=None if None in rss else max(r or 0 for r in rss),
        others_cpu_s=sum(r.others_cpu_s for r in runs),
        steal_s=sum(r.steal_s for r in runs),
        idle_rss=highest.idle_rss,
        run_peak_rss=highest.run_peak_rss,
        concurrency=first.concurrency,
        core_peak=cores,
        rss_timeline=first.rss_timeline,
        listen_drops=sum(r.listen_drops for r in runs),
    )


def _busy_seconds() -> float:
    """CPU time the whole machine spent not idle, over all cores."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def _listen_drops() -> int:
    """The kernel's count of connections dropped at a full accept queue (0 if unknown)."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return 0
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            fields = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(fields.get("ListenDrops", 0))
    return 0


def _steal_seconds() -> float:
    """CPU time stolen by the hypervisor so far, over all cores (0 outside a VM)."""
    return float(getattr(psutil.cpu_times(), "steal", 0.0))


def _start_profiler(relay: Service | None, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling the relay (without pausing it) until stopped with SIGINT."""
    assert relay is not None and relay.ps is not None
    spy = Path(sys.executable).parent / "py-spy"
    cmd = [str(spy), "record", "--nonblocking", "--format", "raw", "--rate", "1000"]
    cmd += ["--pid", str(relay.ps.pid), "--output", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # py-spy attaches before the measured streams start
    return proc


def _stop_profiler(spy: subprocess.Popen[bytes]) -> None:
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(30)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scenario",
        default="latency,throughput,paced,scale",
        help="comma-separated: latency, throughput, paced, scale, requests, soak-scale "
        "(default: the first four)",
    )
    default_targets = "direct,floor,nginx,gateway" if nginx_available() else "direct,floor,gateway"
    parser.add_argument(
        "--targets",
        default=default_targets,
        help="comma-separated: direct, floor, rawfloor, nginx, gateway (default: all but "
        "rawfloor; nginx when "
        f"its binary is installed; here: {default_targets})",
    )
    parser.add_argument(
        "--upstream-host",
        default="127.0.0.1",
        help="the host the gateway targets' config names the fake upstream by (e.g. localhost: "
        "a name, looked up as a real provider's is; default 127.0.0.1)",
    )
    parser.add_argument(
        "--rawfloor-ladder",
        action="store_true",
        help="also run the raw floor with each of its rungs added in turn (bench.rawfloor: "
        "what each of the least of the gateway's per-request work costs)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="gateway serve --workers N for the gateway targets (default 1); CPU and RSS "
        "are summed over the workers and their supervisor",
    )
    parser.add_argument(
        "--gateway-workers",
        default="",
        metavar="N,M",
        help="also run the judged gateway with each of these worker counts, side by side "
        "(e.g. 1,2: targets gateway-native and gateway-native-w2)",
    )
    parser.add_argument(
        "--hold-minutes",
        type=float,
        default=3.0,
        help="soak-scale: how long its 5000 streams stay open (default 3)",
    )
    parser.add_argument(
        "--client-procs",
        type=int,
        default=SCALE_PROCS,
        help=f"client processes of the scale scenarios (default {SCALE_PROCS})",
    )
    parser.add_argument(
        "--transport",
        default="native,aiohttp,httpx",
        help="the gateway's upstream transports, comma-separated; the first is the one "
        "judged against the targets, the others are compared (default: native,aiohttp,httpx)",
    )
    parser.add_argument(
        "--server-variants",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the gateway on asyncio + h11 instead of uvloop + httptools (default on)",
    )
    parser.add_argument(
        "--rounds", type=int, default=10, help="throughput: streams per worker (default 10)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="run each scenario this many times per target and report medians (default 3)",
    )
    parser.add_argument(
        "--hold",
        type=float,
        default=0.0,
        help="keep the processes up this many seconds after the runs (for profiling)",
    )
    parser.add_argument(
        "--profile",
        metavar="SCENARIO",
        help="record the judged gateway with py-spy during this scenario and print its "
        "top functions (the raw profile is kept in the run's directory)",
    )
    parser.add_argument(
        "--candidate",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="also run the gateway package of another checkout (DIR/gateway), side by side; "
        "may be given more than once",
    )
    parser.add_argument(
        "--managed-keys",
        type=int,
        default=0,
        metavar="N",
        help="also run the gateway with the bench key among N keys managed at runtime "
        "(a SQLite key database) instead of in its config",
    )
    parser.add_argument(
        "--routes",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time each ingress API route (chat, responses, messages) against each "
        "upstream API, pass-through and translated (default on)",
    )
    parser.add_argument(
        "--spend",
        action="store_true",
        help="also run the gateway with spend on: prices for the bench models, a (never "
        "reached) budget on the bench key and the request ledger in a SQLite database "
        "(logging.sinks: [file, database]); prints the ledger's write rate",
    )
    parser.add_argument(
        "--tracing",
        default="",
        metavar="RATIOS",
        help="also run the gateway with tracing on at each of these sample ratios "
        "(comma-separated, e.g. 1.0,0.01), exporting over OTLP/HTTP to a local sink",
    )
    parser.add_argument("--keep-tmp", action="store_true", help="keep the logs and configs")
    args = parser.parse_args(argv)
    args.scenario = [s for s in args.scenario.split(",") if s]
    args.targets = [t for t in args.targets.split(",") if t]
    args.transport = [t for t in args.transport.split(",") if t]
    args.tracing = [float(r) for r in args.tracing.split(",") if r]
    try:
        args.gateway_workers = [int(n) for n in args.gateway_workers.split(",") if n]
    except ValueError:
        parser.error(f"--gateway-workers: {args.gateway_workers!r} is not numbers, e.g. 1,2")
    if args.workers < 1 or any(n < 1 for n in args.gateway_workers):
        parser.error("--workers / --gateway-workers: at least 1")
    if args.hold_minutes <= 0 or args.client_procs < 1:
        parser.error("--hold-minutes must be > 0 and --client-procs >= 1")
    known = scenarios(args.rounds)
    for name in args.scenario:
        if name not in known:
            parser.error(f"--scenario: {name!r} is not one of {', '.join(known)}")
    for name in args.targets:
        if name not in ("direct", "floor", "rawfloor", "nginx", "gateway"):
            parser.error(f"--targets: {name!r} is not direct, floor, rawfloor, nginx or gateway")
        if name == "nginx" and not nginx_available():
            parser.error("--targets: nginx is not installed (.ci/system-deps installs it)")
    for transport in args.transport:
        if transport not in get_args(Transport):
            parser.error(
                f"--transport: {transport!r} is not one of {', '.join(get_args(Transport))}"
            )
    return args


def start_targets(
    args: argparse.Namespace,
    tmp: Path,
    upstream: Service,
    redis_url: str,
    models: list[str],
    started: list[Service],
    sink_url: str = "",
) -> list[Target]:
    """The targets of the run; each service is added to `started` as soon as it runs, so the
    caller stops the ones already up when a later one fails to start."""
    targets: list[Target] = []
    if "direct" in args.targets:
        targets.append(Target("direct", "direct (no relay)", None, upstream.url))
    if "floor" in args.targets:
        port = free_port()
        floor = python_service(
            "floor", "bench.floor", ["--port", str(port), "--upstream", upstream.url], tmp, port
        ).start()
        started.append(floor)
        targets.append(Target("floor", "floor (bare aiohttp relay)", floor, floor.url))
    if "rawfloor" in args.targets:
        port = free_port()
        raw = python_service(
            "rawfloor",
            "bench.rawfloor",
            ["--port", str(port), "--upstream", upstream.url],
            tmp,
            port,
        ).start()
        started.append(raw)
        targets.append(
            Target("rawfloor", "raw floor (uvloop+httptools protocols, no framework)", raw, raw.url)
        )
    if args.rawfloor_ladder:
        config = gateway_config(tmp, "rawfloor", upstream.url, redis_url, models)
        for n in range(1, len(RUNGS) + 1):
            rungs = ",".join(RUNGS[:n])
            port = free_port()
            name = f"rawfloor+{RUNGS[n - 1]}"
            argv = ["--port", str(port), "--upstream", upstream.url, "--rungs", rungs]
            raw = python_service(
                name, "bench.rawfloor", [*argv, "--config", str(config)], tmp, port
            ).start()
            started.append(raw)
            targets.append(Target(name, f"raw floor with {rungs}", raw, raw.url))
    if "nginx" in args.targets:
        nginx = nginx_service(tmp, upstream.url, args.nofile).start()
        started.append(nginx)
        label = "nginx (1 worker, proxy_buffering off; CPU and RSS: master + worker)"
        targets.append(Target("nginx", label, nginx, nginx.url))
    if "gateway" not in args.targets:
        return targets

    @dataclass
    class Variant:
        name: str
        transport: str
        server_args: list[str] | None = None
        tree: Path = REPO
        managed_keys: int = 0
        spend: bool = False
        tracing: float | None = None
        workers: int = args.workers

    variants = [Variant(f"gateway-{t}", t) for t in args.transport]
    first = args.transport[0]
    for n in args.gateway_workers:
        if n != args.workers:
            variants.append(Variant(f"gateway-{first}-w{n}", first, workers=n))
    if args.server_variants:
        variants.append(
            Variant(f"gateway-{first}-asyncio-h11", first, ["--loop", "asyncio", "--http", "h11"])
        )
    for tree in args.candidate:
        variants.append(Variant(f"candidate-{tree.name}", first, tree=tree.resolve()))
    if args.managed_keys:
        n = args.managed_keys
        variants.append(Variant(f"gateway-{first}-keys{n}", first, managed_keys=n))
    if args.spend:
        variants.append(Variant(f"gateway-{first}-spend", first, spend=True))
    for ratio in args.tracing:
        variants.append(Variant(f"gateway-{first}-trace{ratio:g}", first, tracing=ratio))
    upstream_url = upstream.url.replace("127.0.0.1", args.upstream_host)
    for v in variants:
        port = free_port()
        config = gateway_config(
            tmp, v.name, upstream_url, redis_url, models, v.transport, v.managed_keys, v.spend
        )
        if v.tracing is not None:
            tracing_variant_config(config, sink_url, v.tracing)
        env: dict[str, str] = {}
        if v.tree != REPO:
            # `-m` imports from the working directory first; `bench` still comes from here.
            env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(REPO), os.environ.get("PYTHONPATH")])
            )
        if v.server_args is None:
            module, cmd = "gateway", ["serve", "--config", str(config), "--port", str(port)]
            how = "uvloop+httptools"
            if v.workers != 1:
                cmd += ["--workers", str(v.workers)]
                how += f", {v.workers} workers (CPU and RSS: workers + supervisor)"
        else:
            module = "bench.serve_variant"
            cmd = ["--config", str(config), "--port", str(port), *v.server_args]
            how = "asyncio+h11"
        where = "" if v.tree == REPO else f", from {v.tree}"
        service = python_service(
            v.name, module, cmd, tmp, port, env=env, health="/healthz", cwd=v.tree
        ).start()
        started.append(service)
        managed = f", bench key among {v.managed_keys} database keys" if v.managed_keys else ""
        managed += ", budget + prices + database ledger" if v.spend else ""
        managed += f", tracing at sample ratio {v.tracing:g}" if v.tracing is not None else ""
        label = f"gateway, {v.transport} transport, {how}{where}{managed}"
        targets.append(Target(v.name, label, service, service.url))
    return targets


def start_otlp_sink(tmp: Path) -> Service:
    """The `--tracing` variants' collector: a local sink that takes and drops every export."""
    port = free_port()
    return python_service(
        "otlp-sink", "bench.otlp_sink", ["--port", str(port)], tmp, port, health="/healthz"
    ).start()


ROUTES = [
    # (route, the API the client calls, the provider: what its upstream speaks)
    ("chat -> chat (pass-through)", "chat", "fast"),
    ("responses -> chat", "responses", "fast"),
    ("messages -> chat", "messages", "fast"),
    ("chat -> messages", "chat", "fast-anthropic"),
    ("messages -> messages (pass-through)", "messages", "fast-anthropic"),
    ("responses -> messages", "responses", "fast-anthropic"),
    ("responses -> responses (pass-through)", "responses", "fast-responses"),
]


def start_routes_gateway(tmp: Path, upstream: Service, redis_url: str, models: list[str]) -> Target:
    """One gateway whose providers speak each upstream API; model `<provider>:<model>`."""
    path = gateway_config(tmp, "gateway-routes", upstream.url, redis_url, [], "native")
    config = yaml.safe_load(path.read_text())
    fast = config["providers"][0]
    config["providers"] += [
        {**fast, "name": "fast-anthropic", "type": "anthropic", "base_url": upstream.url},
        {**fast, "name": "fast-responses", "apis": ["chat", "responses"]},
    ]
    config["models"] = [
        {"name": f"{provider}:{model}", "provider": provider, "upstream_model": model}
        for provider in dict.fromkeys(provider for _, _, provider in ROUTES)
        for model in models
    ]
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    cmd = ["serve", "--config", str(path), "--port", str(port)]
    service = python_service("gateway-routes", "gateway", cmd, tmp, port, health="/healthz").start()
    return Target("gateway-routes", "gateway routes", service, service.url)


def run_routes(
    args: argparse.Namespace, tmp: Path, upstream: Service, services: list[Service], redis_url: str
) -> int:
    """Every route in the latency and throughput shapes; the table, and how many streams
    failed their checks."""
    shapes = [s for name, s in scenarios(args.rounds).items() if name in ("latency", "throughput")]
    target = start_routes_gateway(tmp, upstream, redis_url, [s.model for s in shapes])
    services.append(target.service)  # type: ignore[arg-type]
    problems = 0
    for shape in shapes:
        runs: dict[str, list[Result]] = {route: [] for route, _, _ in ROUTES}
        for _ in range(args.repeat):
            for route, api, provider in ROUTES:
                scenario = replace(shape, model=f"{provider}:{shape.model}", api=api)
                result = run_client(target, scenario, upstream, services, tmp, 300)
                result.target = route
                runs[route].append(result)
                time.sleep(0.5)
        rows = [combine(runs[route]) for route, _, _ in ROUTES]
        problems += sum(r.client["integrity"] + r.client["errors"] for r in rows)
        print(report.routes_table(shape.name, shape.what, rows), flush=True)
    return problems


def ledger_rate(tmp: Path, name: str, results: list[Result]) -> str:
    """The spend variant's ledger: rows written against the request log's lines, and the
    rows per second over the time the benchmark sent it requests."""
    import sqlite3

    log_lines = sum(1 for _ in open(tmp / f"{name}-requests.jsonl", "rb"))  # noqa: SIM115
    with contextlib.closing(sqlite3.connect(tmp / f"{name}-keys.db")) as db:
        rows, cost = db.execute(
            "SELECT count(*), coalesce(sum(cost_nanos), 0) FROM gateway_requests"
        ).fetchone()
    mine = [r for r in results if r.target == name]
    busy = sum(float(r.client["wall_s"]) for r in mine)
    streams = sum(int(r.client["streams"]) for r in mine)
    rate = (
        f"{streams / busy:,.0f} requests/s and {rows / busy:,.0f} ledger rows/s over "
        f"{busy:.1f} s of load"
        if busy
        else "n/a"
    )
    return (
        f"ledger ({name}): {rows:,} rows for {log_lines:,} request log lines and {streams:,} "
        f"streams, ${cost / 1e9:,.6f} in all; {rate}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.nofile = raise_nofile()  # the services started here inherit it
    all_scenarios = scenarios(args.rounds, args.hold_minutes, args.client_procs)
    # Always in this order (latency ... scale), whatever order they were named in: a relay
    # keeps the memory it grew for 3000 streams, which would hide paced's RSS after it.
    chosen = [s for name, s in all_scenarios.items() if name in args.scenario]
    started = time.monotonic()
    judged = f"gateway-{args.transport[0]}"
    tmpdir = tempfile.mkdtemp(prefix="gateway-bench-")
    tmp = Path(tmpdir)
    services: list[Service] = []
    results: list[Result] = []
    try:
        redis = redis_service(tmp).start()
        services.append(redis)
        port = free_port()
        upstream = python_service("upstream", "bench.upstream", ["--port", str(port)], tmp, port)
        services.append(upstream.start())
        sink = start_otlp_sink(tmp) if args.tracing else None  # the --tracing variants'
        if sink is not None:
            services.append(sink)
        targets = start_targets(
            args,
            tmp,
            upstream,
            f"redis://127.0.0.1:{redis.port}/0",
            list(dict.fromkeys(m for s in chosen for m in (s.model, s.warmup_model) if m)),
            services,
            sink.url if sink is not None else "",
        )
        print(report.header(targets), flush=True)
        variants = {f"gateway-{t}" for t in args.transport[1:]} | {f"{judged}-asyncio-h11"}
        for scenario in chosen:
            targets_now = [t for t in targets if scenario.variants or t.name not in variants]
            runs: dict[str, list[Result]] = {t.name: [] for t in targets_now}
            # Repeats go round the targets, so a noisy moment on the machine hits each one.
            for rep in range(scenario.repeat or args.repeat):
                for target in targets_now:
                    profile = None
                    if args.profile == scenario.name and target.name == judged and rep == 0:
                        profile = tmp / f"profile-{target.name}-{scenario.name}.txt"
                    result = run_client(target, scenario, upstream, services, tmp, 300, profile)
                    runs[target.name].append(result)
                    time.sleep(0.5)  # let closed connections and background work settle
            rows = [combine(runs[t.name]) for t in targets_now]
            results += rows
            print(report.scenario_table(scenario.name, scenario.what, rows), flush=True)
            if scenario.name == "soak-scale":
                print(report.rss_timelines(rows), flush=True)
            raw = tmp / f"profile-{judged}-{scenario.name}.txt"
            if raw.exists():
                print(report.profile_summary(raw), flush=True)
        route_problems = 0
        if args.routes and "gateway" in args.targets:
            redis_url = f"redis://127.0.0.1:{redis.port}/0"
            route_problems = run_routes(args, tmp, upstream, services, redis_url)
        checked, limits_on = report.sanity(targets, redis.port, redis_command, judged)
        print(checked, flush=True)
        print(report.verdicts(results, args.transport), flush=True)
        print(report.transport_comparison(results, args.transport), flush=True)
        if sink is not None:
            print(sink_stats(sink.url), flush=True)
        if args.spend:
            print(ledger_rate(tmp, f"gateway-{args.transport[0]}-spend", results), flush=True)
        kept = f"; logs in {tmp}" if args.keep_tmp or args.profile else ""
        print(f"total time {time.monotonic() - started:.0f} s{kept}", flush=True)
        if args.hold:
            print(f"holding the processes for {args.hold:g} s", flush=True)
            time.sleep(args.hold)
        # Errors of a compared variant (httpx's pool timing out under 500 streams) are a
        # finding, printed above; a lost, duplicated or reordered chunk anywhere, or an
        # error of the judged gateway, the floor or direct access, fails the run.
        compared = {r.target for r in results if r.target.startswith(("gateway-", "candidate-"))}
        compared.discard(judged)
        failed = (
            not limits_on
            or route_problems > 0
            or any(
                r.client["integrity"] or (r.client["errors"] and r.target not in compared)
                for r in results
            )
        )
        return 1 if failed else 0
    finally:
        for service in reversed(services):
            service.stop()
        if not (args.keep_tmp or args.profile):
            import shutil

            shutil.rmtree(tmpdir, ignore_errors=True)
