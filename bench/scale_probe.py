"""A burst probe for issue 22: N streams arriving at once, against gateway trees A/B (and
nginx), in one run, alternating, so the box's noise hits each the same.

    python -m bench.scale_probe --tree /tmp/base --tree . [--nginx] [--rounds 2]

Each target gets the same fresh upstream (`bench.upstream`) and Redis; the load comes from
`--clients` processes of `bench.client`, each opening its share of the streams at once (a
new connection each). Printed per round and target: TTFT p50/p99, inter-chunk p99, the
relay's CPU per 1k chunks, its peak RSS, its RSS per open stream (peak minus the RSS before
the burst, over the streams), the kernel's ListenOverflows/ListenDrops during the burst and
the CPU Redis and the upstream spent meanwhile.
`--spy DIR` records a py-spy profile of each gateway's burst. A throwaway measuring tool,
not part of `make bench` (bench/run.py's `scale` scenario is).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import redis
import yaml

from bench.procs import (
    BENCH_KEY,
    REPO,
    Sampler,
    Service,
    free_port,
    gateway_config,
    nginx_service,
    python_service,
    raise_nofile,
    redis_service,
)


def netstat(*names: str) -> dict[str, int]:
    lines = Path("/proc/net/netstat").read_text().splitlines()
    values: dict[str, int] = {}
    for head, row in zip(lines[::2], lines[1::2], strict=True):
        values.update(zip(head.split()[1:], map(int, row.split()[1:]), strict=True))
    return {n: values.get(n, 0) for n in names}


def system_seconds(service: Service) -> float:
    """The kernel's share of the relay's CPU, over its process tree (nginx's worker too)."""
    return sum(float(p.cpu_times().system) for p in service.processes())


def burst(
    service: Service,
    args: argparse.Namespace,
    tmp: Path,
    spy_out: Path | None,
    others: dict[str, Service],
) -> dict[str, Any]:
    per, extra = divmod(args.streams, args.clients)
    procs = []
    for i in range(args.clients):
        n = per + (i < extra)
        cmd = [
            sys.executable, "-m", "bench.client", "--url", service.url, "--key", BENCH_KEY,
            "--model", args.model, "--streams", str(n), "--concurrency", str(n),
            "--fresh", "--warmup", "10", "--wait-go", "--timeout", "60", "--deadline", "120",
        ]  # fmt: skip
        procs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO))
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline().strip()
        if line != b"ready":
            raise RuntimeError(f"client not ready: {line[:500]!r}")
    time.sleep(0.5)
    spy = None
    if spy_out is not None and service.ps is not None:
        cmd = [str(Path(sys.executable).parent / "py-spy"), "record", *args.spy_arg]
        cmd += ["--format", "raw", "--pid", str(service.ps.pid)]
        cmd += ["--output", str(spy_out), "--duration", str(args.spy_seconds)]
        spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
    if args.signal_at and service.ps is not None:
        service.ps.send_signal(signal.SIGUSR1)  # a baseline snapshot
        time.sleep(1)
    attached = None
    if args.attach and service.ps is not None:
        attached = subprocess.Popen(args.attach.format(pid=service.ps.pid), shell=True)
        time.sleep(1)
    base_rss = service.rss()
    before = netstat("ListenOverflows", "ListenDrops")
    cpu0 = service.cpu_seconds()
    sys0 = system_seconds(service)
    others0 = {name: other.cpu_seconds() for name, other in others.items()}
    scripts0 = _script_calls(others)
    with Sampler(service, {}, interval=0.05) as rss:
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(b"go\n")
            p.stdin.flush()
        if args.signal_at and service.ps is not None:
            time.sleep(args.signal_at)
            service.ps.send_signal(signal.SIGUSR1)
        outs = []
        for p in procs:
            assert p.stdout is not None
            outs.append(orjson.loads(p.stdout.readline()))
        time.sleep(0.25)
        cpu = service.cpu_seconds() - cpu0
        sys_cpu = system_seconds(service) - sys0
        others_cpu = {n: o.cpu_seconds() - others0[n] for n, o in others.items()}
        scripts = [b - a for a, b in zip(scripts0, _script_calls(others), strict=True)]
    after = netstat("ListenOverflows", "ListenDrops")
    for p in procs:
        p.wait(10)
    if attached is not None:
        attached.send_signal(signal.SIGINT)
        attached.wait(60)
    if spy is not None:
        spy.wait(60)
    events = sum(o["events"] for o in outs)
    return {
        "ok": sum(o["ok"] for o in outs),
        "errors": sum(o["errors"] + o["integrity"] for o in outs),
        "samples": [s for o in outs for s in o["samples"]][:3],
        # Each process's percentiles; their median (equal shares of streams).
        "ttft_p50": statistics.median(o["ttft_p50"] or 0 for o in outs),
        "ttft_p99": max(o["ttft_p99"] or 0 for o in outs),
        "gap_p99": max(o["gap_p99"] or 0 for o in outs),
        "cpu_ms_per_1k": cpu * 1e6 / events if events else None,
        "cpu_s": cpu,
        "sys_share": sys_cpu / cpu if cpu else None,
        # The services beside the relay, on the same cores (Redis works for the gateway only).
        **{f"{n}_cpu_s": round(c, 3) for n, c in others_cpu.items()},
        # Redis's script calls (admissions and settles) and their own time, during the burst.
        "redis_evalsha_calls": scripts[0],
        "redis_evalsha_s": round(scripts[1] / 1e6, 4),
        "peak_rss_mb": rss.peak / 2**20,
        "rss_per_stream_kb": (rss.peak - base_rss) / args.streams / 1024,
        "overflows": after["ListenOverflows"] - before["ListenOverflows"],
        "drops": after["ListenDrops"] - before["ListenDrops"],
    }


def _script_calls(others: dict[str, Service]) -> tuple[int, float]:
    """Redis's EVALSHA calls so far and their µs (`INFO commandstats`)."""
    with redis.Redis(port=others["redis"].port) as probe:
        stats = probe.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)), float(stats.get("usec", 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        help="a gateway tree; PATH@N: N workers, PATH+key=value: a config setting",
    )
    parser.add_argument("--nginx", action="store_true")
    parser.add_argument("--streams", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--model", default="bench-n20-p200")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--spy", type=Path, default=None, help="write py-spy profiles here")
    parser.add_argument("--spy-seconds", type=int, default=6)
    parser.add_argument("--attach", default="", help="a command run on {pid} during the burst")
    parser.add_argument("--spy-arg", action="append", default=[], help="e.g. --native")
    parser.add_argument("--serve-arg", action="append", default=[], help="extra serve args")
    parser.add_argument("--env", action="append", default=[], help="K=V for the gateways")
    parser.add_argument("--signal-at", type=float, default=0.0, help="SIGUSR1 after S s")
    args = parser.parse_args()
    nofile = raise_nofile()  # the services started here inherit it
    tmp = Path(tempfile.mkdtemp(prefix="scale-probe-"))
    upstream_port = free_port()
    upstream = python_service(
        "upstream", "bench.upstream", ["--port", str(upstream_port)], tmp, upstream_port
    ).start()
    redis = redis_service(tmp).start()
    services: list[tuple[str, Service]] = []
    try:
        for i, spec in enumerate(args.tree):
            spec, *sets = spec.split("+")
            where, _, workers = spec.partition("@")
            tree = Path(where).resolve()
            name = f"{i}-{tree.name}" + (f"-w{workers}" if workers else "")
            config = gateway_config(
                tmp, name, upstream.url, f"redis://127.0.0.1:{redis.port}/0", [args.model]
            )
            if sets:
                data = yaml.safe_load(config.read_text())
                for item in sets:
                    key, _, value = item.partition("=")
                    data[key] = yaml.safe_load(value)
                config.write_text(yaml.safe_dump(data))
                name += "+" + "+".join(sets)
            port = free_port()
            env = dict(e.split("=", 1) for e in args.env)
            if tree != REPO:
                env["PYTHONPATH"] = os.pathsep.join(
                    filter(None, [env.get("PYTHONPATH"), str(REPO)])
                )
            cmd = ["serve", "--config", str(config), "--port", str(port), *args.serve_arg]
            cmd += ["--workers", workers] if workers else []
            services.append(
                (
                    name,
                    Service(
                        name,
                        [sys.executable, "-m", "gateway", *cmd],
                        tmp,
                        port,
                        env=env,
                        health="/healthz",
                        cwd=tree,
                    ).start(),
                )
            )
        if args.nginx:
            services.append(("nginx", nginx_service(tmp, upstream.url, nofile).start()))
        for r in range(args.rounds):
            for name, service in services:
                spy_out = None
                if args.spy is not None and name != "nginx":
                    args.spy.mkdir(parents=True, exist_ok=True)
                    spy_out = args.spy / f"{name}-r{r}.txt"
                others = {"redis": redis, "upstream": upstream}
                result = burst(service, args, tmp, spy_out, others)
                print(f"round {r} {name}: {orjson.dumps(result).decode()}", flush=True)
                time.sleep(2)
    finally:
        for _, service in services:
            service.stop()
        redis.stop()
        upstream.stop()
        print(f"logs in {tmp}", file=sys.stderr)
    os._exit(0)


if __name__ == "__main__":
    main()
