"""bench.step_probe, the CPU-per-step probe of docs/performance.md ("Round 3"): it times a
coroutine's own CPU and not its waits, its table subtracts children, and every function it
wraps still exists in the gateway (a rename would break the probe, not the gateway)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import step_probe
from bench.step_probe import REQUESTS, _Timed, own_times

REPO = Path(__file__).resolve().parent.parent


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


async def _work(fail: bool) -> str:
    _burn(0.02)
    await asyncio.sleep(0.3)  # a wait: no CPU
    _burn(0.02)
    if fail:
        raise ValueError("boom")
    return "done"


def test_a_coroutine_is_charged_its_cpu_and_not_its_waits() -> None:
    key = "test: coroutine"
    step_probe.NS.pop(key, None)
    step_probe.N.pop(key, None)

    async def run() -> str:
        return await _Timed(_work(False), key)

    assert asyncio.run(run()) == "done"
    # 40 ms burnt, 300 ms slept: the sum is the burn (wide margins for a busy box).
    assert 0.035 < step_probe.NS[key] / 1e9 < 0.2
    assert step_probe.N[key] == 1


def test_a_coroutine_s_error_passes_through_and_is_still_counted() -> None:
    key = "test: failing coroutine"

    async def run() -> str:
        return await _Timed(_work(True), key)

    with pytest.raises(ValueError, match="boom"):
        asyncio.run(run())
    assert step_probe.N[key] == 1
    assert step_probe.NS[key] / 1e9 > 0.035


def test_own_time_is_inclusive_less_children_and_probe_costs() -> None:
    parent = "model resolve"  # a label whose parent is REQUESTS's child
    child_of_requests = "RelayContext, draining check (RelayEndpoint._open own)"
    ns = {REQUESTS: 100_000, child_of_requests: 60_000, parent: 10_000}
    n = {REQUESTS: 1, child_of_requests: 1, parent: 1}
    own = own_times(ns, n)
    inside, out = step_probe.INSIDE, step_probe.ASYNC_OUT
    assert own[REQUESTS] == pytest.approx(100 - inside - 60 - out)
    assert own[child_of_requests] == pytest.approx(60 - inside - 10 - step_probe.SYNC_OUT)
    assert own[parent] == pytest.approx(10 - inside)


def test_the_sync_calls_of_a_label_with_async_probes_cost_a_sync_probe_each() -> None:
    """`uvicorn send`: async `send`, and the body writer's sync `start` and `end`."""
    send, app = step_probe.SEND, "ASGI app entry + routing (run_asgi, GatewayApp)"
    relay = "relay of the chunks and the end (without uvicorn send)"
    ns = {REQUESTS: 100_000, app: 200_000, relay: 50_000, send: 20_000}
    n = {REQUESTS: 1, app: 1, relay: 1, send: 1, send + step_probe.SYNC_CALLS: 2}
    own = own_times(ns, n)
    inside, a_out, s_out = step_probe.INSIDE, step_probe.ASYNC_OUT, step_probe.SYNC_OUT
    assert own[send] == pytest.approx(20 - 3 * inside)
    assert own[relay] == pytest.approx(50 - inside - 20 - a_out - 2 * s_out)
    assert own[app] == pytest.approx(200 - inside - 100 - a_out)


def test_every_probed_function_exists_and_the_sums_are_written_at_exit(tmp_path: Path) -> None:
    code = "from bench.step_probe import install; install()"
    env = {**os.environ, "STEP_PROBE_DIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True, timeout=60)
    (dump,) = tmp_path.glob("steps-*.json")
    ns, n = json.loads(dump.read_text())
    assert isinstance(ns, dict) and isinstance(n, dict)
