"""Instructions per request and per relayed chunk in the real server, counted by callgrind.

    python -m bench.instructions [--tree DIR ...] [--streams 200] [--chunks 40] [--set K=V]
        [--upstream-headers minimal|openai|anthropic] [--deployments N]

Wall-clock CPU on a shared 2-core box moves by 5-10% from run to run; an instruction count
does not depend on what else the machine does. For each gateway tree (default: this
checkout; a DIR holds a `gateway/` package, e.g. `git archive REV gateway | tar -x -C DIR`)
this runs `gateway serve` under `valgrind --tool=callgrind` three times with the bench's
config (Redis limits, metrics, request log; `--set key=value` changes a top-level setting,
the value read as YAML) and the bench's fake upstream, with `--streams` concurrent streams
from `bench.client` each time:

- A: one-chunk streams (`bench-n1-p200`), `streams` of them;
- B: the same, twice as many;
- C: `streams` streams of `chunks + 1` chunks 200 ms apart.

`--upstream-headers openai` has the fake upstream answer with the 24 header fields of a real
OpenAI stream instead of 3 (`bench.upstream --headers`); `--deployments 2` gives each model
two deployments on the same provider, so the router reads the upstream's rate-limit headers
(`Deployment.observed`).

Per request = (B - A) / streams; per chunk = (C - A) / (streams x chunks): start-up, the
warm-up streams and the shutdown cancel out. Each run takes 20-60 s; the figures move by
about 1-2% from run to run (the loop's batching of events depends on timing), so call a
change real only past that. Needs valgrind on PATH.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import orjson
import yaml

from bench.procs import (
    BENCH_KEY,
    REPO,
    Service,
    free_port,
    gateway_config,
    python_service,
    raise_nofile,
    redis_service,
)
from bench.upstream import HEADS

_TOTALS = re.compile(rb"^totals: (\d+)", re.MULTILINE)
_PACE_MS = 200


@dataclass(frozen=True)
class Counts:
    """Instructions of the three runs of one tree."""

    base: int
    double: int
    long: int
    streams: int
    chunks: int

    @property
    def per_request(self) -> float:
        return (self.double - self.base) / self.streams

    @property
    def per_chunk(self) -> float:
        return (self.long - self.base) / (self.streams * self.chunks)


def total_instructions(callgrind_out: Path) -> int:
    """The `totals:` line of a callgrind output file."""
    match = _TOTALS.search(callgrind_out.read_bytes())
    if match is None:
        raise RuntimeError(f"no totals in {callgrind_out}")
    return int(match.group(1))


def one_run(tree: Path, config: Path, tmp: Path, label: str, model: str, streams: int) -> int:
    """Instructions of one `gateway serve` under callgrind that relayed `streams` streams."""
    out = tmp / f"{label}.callgrind"
    port = free_port()
    cmd = [
        "valgrind", "--tool=callgrind", "--dump-instr=no", f"--callgrind-out-file={out}",
        sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(port),
    ]  # fmt: skip
    env = {"PYTHONHASHSEED": "0"}
    if tree != REPO:
        env["PYTHONPATH"] = str(REPO)  # bench's own modules; the tree's gateway comes first
    gateway = Service(label, cmd, tmp, port, env=env, health="/healthz", cwd=tree)
    gateway.start(timeout=300)
    try:
        load = [
            sys.executable, "-m", "bench.client", "--url", gateway.url, "--key", BENCH_KEY,
            "--model", model, "--streams", str(streams), "--concurrency", str(streams),
            "--fresh", "--warmup", "10", "--timeout", "300", "--deadline", "600",
        ]  # fmt: skip
        client = subprocess.run(
            load,
            capture_output=True,
            cwd=REPO,
            check=True,
        )
    finally:
        gateway.stop(timeout=300)  # callgrind writes its counts as the process exits
    result = orjson.loads(client.stdout.splitlines()[-1])
    if result["ok"] != streams or result["errors"] or result["integrity"]:
        raise RuntimeError(f"{label}: not every stream came through intact: {result}")
    return total_instructions(out)


def with_deployments(model: dict[str, str], n: int) -> dict[str, object]:
    """A bench model served by `n` deployments of its provider (one model, n routes)."""
    deployment = {"provider": model["provider"], "upstream_model": model["name"]}
    return {
        "name": model["name"],
        "deployments": [dict(deployment, name=f"d{i}") for i in range(n)],
    }


def measure(
    tree: Path,
    tmp: Path,
    streams: int,
    chunks: int,
    settings: dict[str, object],
    upstream_headers: str = "minimal",
    deployments: int = 1,
) -> Counts:
    upstream_port = free_port()
    upstream = python_service(
        "upstream",
        "bench.upstream",
        ["--port", str(upstream_port), "--headers", upstream_headers],
        tmp,
        upstream_port,
    ).start()
    redis = redis_service(tmp).start()
    one = f"bench-n1-p{_PACE_MS}"
    long = f"bench-n{chunks + 1}-p{_PACE_MS}"
    try:
        config = gateway_config(
            tmp,
            tree.name or "gateway",
            upstream.url,
            f"redis://127.0.0.1:{redis.port}/0",
            [one, long],
        )
        if settings or deployments > 1:
            data = yaml.safe_load(config.read_text())
            if deployments > 1:
                data["models"] = [with_deployments(m, deployments) for m in data["models"]]
            data.update(settings)
            config.write_text(yaml.safe_dump(data))
        return Counts(
            base=one_run(tree, config, tmp, f"{tree.name}-a", one, streams),
            double=one_run(tree, config, tmp, f"{tree.name}-b", one, 2 * streams),
            long=one_run(tree, config, tmp, f"{tree.name}-c", long, streams),
            streams=streams,
            chunks=chunks,
        )
    finally:
        redis.stop()
        upstream.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", type=Path, default=[])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--chunks", type=int, default=40, help="more chunks per stream in C")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE (YAML)")
    parser.add_argument(
        "--upstream-headers",
        choices=sorted(HEADS),
        default="minimal",
        help="the fake upstream's head fields (bench.upstream --headers)",
    )
    parser.add_argument(
        "--deployments", type=int, default=1, help="deployments of each model (2+: observed)"
    )
    args = parser.parse_args()
    raise_nofile()
    settings = {}
    for item in args.set:
        key, _, value = item.partition("=")
        settings[key] = yaml.safe_load(value)
    trees = [tree.resolve() for tree in args.tree] or [REPO]
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as tmp:
        for tree in trees:
            counts = measure(
                tree,
                Path(tmp),
                args.streams,
                args.chunks,
                settings,
                args.upstream_headers,
                args.deployments,
            )
            print(
                f"{tree}: {counts.per_request:,.0f} instructions per request, "
                f"{counts.per_chunk:,.0f} per relayed chunk "
                f"(totals {counts.base:,} / {counts.double:,} / {counts.long:,})",
                flush=True,
            )
    os._exit(0)


if __name__ == "__main__":
    main()
