"""Multiprocess mode: two worker processes record, the parent's render() sums them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import values

from gateway.observability.metrics import (
    MULTIPROC_ENV,
    Metrics,
    mark_process_dead,
    prepare_multiprocess_dir,
)
from tests.observability.obs_support import families, value

REPO = Path(__file__).resolve().parents[2]

WORKER = """
import os, sys

if sys.argv[1] == "late":
    # prometheus_client picks in-memory values on import when the variable is not set yet.
    import prometheus_client  # noqa: F401
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[2]

from gateway.observability.metrics import Metrics
from gateway.observability.records import Gaps, RequestRecord

metrics = Metrics(["gpt-test"], ["openai-main"], ["team-a"])
for _ in range(3):
    metrics.record(
        RequestRecord(
            request_id="r", route="chat.completions", key_id="team-a", model="gpt-test",
            provider="openai-main", status=200, ttft_s=0.1, duration_s=1.0,
            prompt_tokens=10, completion_tokens=5, inter_token_s=Gaps([0.01] * 20),
        )
    )
metrics.stream_opened("gpt-test")
metrics.stream_opened("gpt-test")
metrics.set_log_queue_depth(4)
metrics.rate_limited("team-a", "tpm")
print(os.getpid())
"""


@pytest.fixture
def multiproc_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An emptied metrics directory; the process's prometheus value class is put back after."""
    directory = tmp_path / "prom"
    prepare_multiprocess_dir(str(directory))
    saved = values.ValueClass
    yield directory
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    values.ValueClass = saved
    values.close_all_multiprocess_files()  # type: ignore[no-untyped-call]


def run_worker(directory: Path, mode: str) -> int:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop(MULTIPROC_ENV, None)
    if mode == "early":
        env[MULTIPROC_ENV] = str(directory)
    done = subprocess.run(
        [sys.executable, "-c", WORKER, mode, str(directory)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip())


def test_render_sums_counters_and_live_gauges_over_worker_processes(
    multiproc_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One worker that sees the variable from the start, one that gets it after importing
    # prometheus_client: both must write to the shared directory.
    pid_a = run_worker(multiproc_dir, "early")
    pid_b = run_worker(multiproc_dir, "late")
    monkeypatch.setenv(MULTIPROC_ENV, str(multiproc_dir))
    parent = Metrics(["gpt-test"], ["openai-main"], ["team-a"])
    assert parent.multiprocess

    body, _ = parent.render()
    labels = {"model": "gpt-test", "provider": "openai-main"}
    assert value(body, "gateway_requests_total", status="200", outcome="completed") == 6
    assert value(body, "gateway_tokens_total", direction="prompt", key_id="team-a") == 60
    assert value(body, "gateway_tokens_total", direction="completion") == 30
    assert value(body, "gateway_time_to_first_token_seconds_count", **labels) == 6
    assert value(body, "gateway_inter_token_latency_seconds_count", **labels) == 120
    assert value(body, "gateway_inter_token_latency_seconds_bucket", le="0.01") == 120
    assert value(body, "gateway_inter_token_latency_seconds_bucket", le="0.0075") == 0
    assert value(body, "gateway_rate_limited_total", key_id="team-a", limit="tpm") == 2
    assert value(body, "gateway_active_streams", model="gpt-test") == 4
    assert value(body, "gateway_log_queue_depth") == 8
    assert not any(name.endswith("_created") for name in families(body))

    # A dead worker's streams and queue leave the gauges; what it counted stays counted.
    mark_process_dead(pid_a)
    body, _ = parent.render()
    assert value(body, "gateway_active_streams", model="gpt-test") == 2
    assert value(body, "gateway_log_queue_depth") == 4
    assert value(body, "gateway_requests_total") == 6

    mark_process_dead(pid_b)
    body, _ = parent.render()
    assert value(body, "gateway_active_streams", model="gpt-test") == 0


def test_the_parent_records_into_the_shared_files_too(
    multiproc_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MULTIPROC_ENV, str(multiproc_dir))
    metrics = Metrics(["gpt-test"], ["openai-main"], ["team-a"])
    metrics.stream_opened("gpt-test")
    metrics.upstream_error("openai-main", "http_5xx")

    body, _ = metrics.render()
    assert value(body, "gateway_active_streams", model="gpt-test") == 1
    assert value(body, "gateway_upstream_errors_total", kind="http_5xx") == 1
    assert metrics.active_streams_total() == 1
    assert any(p.name.startswith("gauge_livesum_") for p in multiproc_dir.iterdir())

    # A worker's last shutdown step: its live gauges leave, its counters stay.
    metrics.close()
    body, _ = metrics.render()
    assert not any(p.name.startswith("gauge_livesum_") for p in multiproc_dir.iterdir())
    assert not value(body, "gateway_active_streams", model="gpt-test")
    assert value(body, "gateway_upstream_errors_total", kind="http_5xx") == 1
