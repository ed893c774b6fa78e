"""The benchmark's scale machinery (bench/): the nginx reference relay it writes a config
for, load split over several client processes, and their results merged.

Real processes throughout: the bench's fake upstream, nginx from the system (.ci/system-deps)
and `bench.client` processes, on loopback, a few dozen short streams (seconds).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.client import merge, percentile
from bench.procs import Service, nginx_service, raise_nofile
from bench.run import Result, Scenario, Target, _client_cmd, combine, run_client
from tests.support.bench_services import bench_upstream, small_scale


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Service]:
    with bench_upstream(tmp_path) as service:
        yield service


@pytest.mark.nginx
def test_nginx_relays_streams_from_two_client_processes_intact(
    upstream: Service, tmp_path: Path
) -> None:
    nginx = nginx_service(tmp_path, upstream.url, raise_nofile()).start()
    try:
        config = (tmp_path / "nginx" / "nginx.conf").read_text()
        for directive in ("worker_processes 1;", "proxy_buffering off;", 'Connection "";'):
            assert directive in config
        scenario = small_scale(procs=2)
        target = Target("nginx", "nginx", nginx, nginx.url)
        result = run_client(target, scenario, upstream, [upstream, nginx], tmp_path, 60)
        # What is measured as nginx is its master and its one worker process.
        assert len(nginx.processes()) == 2
    finally:
        nginx.stop()
    client = result.client
    assert (client["streams"], client["ok"], client["errors"], client["integrity"]) == (
        41,
        41,
        0,
        0,
    ), client["samples"]
    # 5 content chunks, the finish, usage and [DONE] events of every stream, through nginx.
    assert result.events == 41 * 8
    assert 0.015 < client["gap_p50"] < 0.2
    assert result.relay_cpu_s is not None
    assert result.idle_rss and result.peak_rss and result.peak_rss >= result.idle_rss
    assert set(result.core_peak) == {"relay", "upstream", "client"}


def test_client_processes_share_the_streams_exactly() -> None:
    scenario = Scenario("s", "bench-n20-p200", 3001, 3001, True, 21, "", procs=2)
    target = Target("t", "t", None, "http://127.0.0.1:1")
    parts = [_client_cmd(target, scenario, n, 2) for n in range(2)]

    def value(cmd: list[str], flag: str) -> int:
        return int(cmd[cmd.index(flag) + 1])

    for flag, total in (("--streams", 3001), ("--concurrency", 3001), ("--warmup", 21)):
        assert sum(value(cmd, flag) for cmd in parts) == total
    assert all("--raw" in cmd and "--fresh" in cmd for cmd in parts)


def test_merged_percentiles_are_over_every_sample_not_averaged() -> None:
    def part(ttft: list[float], wall: float) -> dict[str, object]:
        return {
            "streams": len(ttft),
            "ok": len(ttft),
            "events": 3 * len(ttft),
            "errors": 0,
            "integrity": 0,
            "samples": [],
            "wall_s": wall,
            "client_cpu_s": 0.5,
            "ttft": ttft,
            "gaps": [0.2] * len(ttft),
        }

    fast = [0.001 * i for i in range(1, 100)]
    slow = [2.0]  # one slow stream in the other process
    merged = merge([part(fast, 4.0), part(slow, 5.0)])
    everything = sorted(fast + slow)
    assert merged["ttft_p99"] == percentile(everything, 99)
    assert merged["ttft_p50"] == percentile(everything, 50)
    assert merged["streams"] == 100 and merged["events"] == 300
    assert merged["wall_s"] == 5.0 and merged["client_cpu_s"] == 1.0


@pytest.mark.nginx
def test_the_burst_probe_runs_a_gateway_tree_beside_the_bench_s_nginx() -> None:
    """`python -m bench.scale_probe` (docs/performance.md's burst tool) end to end on a small
    burst: it shares bench.procs' services and sampler, so a change there shows up here."""
    import orjson

    from bench.procs import REPO

    probe = [sys.executable, "-m", "bench.scale_probe", "--tree", str(REPO), "--nginx"]
    out = subprocess.run(
        [*probe, "--streams", "20", "--clients", "1", "--model", "bench-n5-p20"],
        cwd=REPO,
        capture_output=True,
        timeout=120,
        check=True,
    ).stdout.decode()
    rounds = [line.split(": ", 1) for line in out.splitlines() if line.startswith("round 0 ")]
    assert [name.removeprefix("round 0 ") for name, _ in rounds] == [f"0-{REPO.name}", "nginx"]
    for _, result in rounds:
        data = orjson.loads(result)
        assert (data["ok"], data["errors"]) == (20, 0)
        assert data["peak_rss_mb"] > 0


def test_rss_per_stream_of_repeats_is_one_run_s_growth_not_the_last_peak_over_the_first_idle() -> (
    None
):
    """Three bursts on one relay: each starts from what the one before left (the heap the
    allocators keep), so the last peak is the highest. Per open stream counts one run's own
    growth: the most any run grew, not the last peak minus the first idle (which counted all
    three bursts' leftovers against one burst's 3,000 streams)."""
    mb = 2**20
    client = {
        "streams": 3000, "ok": 3000, "errors": 0, "integrity": 0, "events": 69000,
        "wall_s": 5.0, "client_cpu_s": 1.0, "ttft_p50": 1.0, "ttft_p99": 2.0,
        "gap_p50": 0.2, "gap_p99": 0.3, "samples": [],
    }  # fmt: skip

    def run(idle: int, peak: int) -> Result:
        return Result(
            "gateway", "scale", dict(client), 3.0, 1.0, peak * mb, 0.0,
            idle_rss=idle * mb, run_peak_rss=peak * mb, concurrency=3000,
        )  # fmt: skip

    row = combine([run(54, 119), run(119, 132), run(132, 141)])
    assert row.peak_rss == 141 * mb  # the peak RSS column: the highest seen
    assert row.rss_per_stream == (119 - 54) * mb / 3000
    assert combine([run(54, 119)]).rss_per_stream == (119 - 54) * mb / 3000


def test_a_target_failing_at_start_up_leaves_no_process_of_the_run_behind(
    tmp_path: Path,
) -> None:
    """The targets started before one that fails to start are stopped with the rest (the
    gateway, Redis and the upstream of the run): the run's processes carry its tmp dir
    (under this test's TMPDIR) in their command lines, and none is left once it exits."""
    broken = tmp_path / "broken"
    (broken / "gateway").mkdir(parents=True)
    (broken / "gateway" / "__init__.py").write_text("")
    (broken / "gateway" / "__main__.py").write_text('raise SystemExit("broken on purpose")\n')
    runs = tmp_path / "runs"
    runs.mkdir()
    run = subprocess.run(
        [
            *(sys.executable, "-m", "bench", "--scenario", "latency", "--targets", "gateway"),
            *("--transport", "native", "--no-server-variants", "--no-routes"),
            *("--candidate", str(broken)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "TMPDIR": str(runs)},
    )
    assert run.returncode != 0 and "broken on purpose" in run.stderr + run.stdout
    # gateway-native (the judged target) starts before any candidate: it ran, and is gone
    left = [cmdline for cmdline in _command_lines() if str(runs) in cmdline]
    assert not left, left


def _command_lines() -> list[str]:
    """Every process's command line (from /proc: `ps` cuts them at its output's width)."""
    lines = []
    for proc in Path("/proc").iterdir():
        try:
            lines.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, ValueError):
            continue  # not a process, or gone meanwhile
    return lines


def test_a_service_that_never_becomes_ready_is_stopped(tmp_path: Path) -> None:
    """A target that does not answer its health check in time is not left running."""
    from bench.procs import free_port

    never = Service(
        "never", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path, free_port()
    )
    with pytest.raises(RuntimeError, match="did not become ready"):
        never.start(timeout=0.5)
    assert never.proc is None
    assert never.ps is not None and not never.ps.is_running()
