"""The cycle collector run from the server's tick (gateway.server.collector): CPython's
thresholds and generations; while the process is busy, a freeze in place of a collection,
and what was frozen collected at the next quiet moment or after `max_frozen` seconds."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import uvicorn

from gateway.server import GatewayServer, bind
from gateway.server.collector import THRESHOLDS, Collector


class Box:
    """A fake process: wall clock, CPU time and the gc counts, moved by the test."""

    def __init__(self) -> None:
        self.wall = 100.0
        self.cpu = 10.0
        self.count = (0, 0, 0)
        self.collected: list[int] = []
        self.calls: list[str] = []

    def collector(self, **kw: Any) -> Collector:
        return Collector(
            clock=lambda: self.wall,
            cpu=lambda: self.cpu,
            get_count=lambda: self.count,
            collect=self.collect,
            freeze=lambda: self.calls.append("freeze"),
            unfreeze=lambda: self.calls.append("unfreeze"),
            **kw,
        )

    def collect(self, generation: int) -> int:
        self.collected.append(generation)
        self.calls.append(f"collect {generation}")
        return 0

    def later(self, seconds: float, busy: float) -> None:
        """`seconds` pass, `busy` of them on the CPU."""
        self.wall += seconds
        self.cpu += seconds * busy


def test_nothing_is_collected_until_the_young_count_passes_its_threshold() -> None:
    box = Box()
    collector = box.collector()
    box.count = (THRESHOLDS[0], 0, 0)
    box.later(0.1, 0.0)
    assert collector.tick() is None
    box.count = (THRESHOLDS[0] + 1, 0, 0)
    box.later(0.1, 0.0)
    assert collector.tick() == 0
    assert box.collected == [0]


def test_the_oldest_generation_past_its_threshold_is_collected_as_cpython_does() -> None:
    box = Box()
    collector = box.collector()
    young = THRESHOLDS[0] + 1
    for counts, generation in [
        ((young, THRESHOLDS[1], 0), 0),
        ((young, THRESHOLDS[1] + 1, 0), 1),
        ((young, THRESHOLDS[1] + 1, THRESHOLDS[2] + 1), 2),
        ((young, 0, THRESHOLDS[2] + 1), 2),
    ]:
        box.count = counts
        box.later(0.1, 0.1)
        assert collector.tick() == generation, counts
    assert box.collected == [0, 1, 2, 2]


def test_a_busy_process_freezes_instead_and_collects_all_at_its_next_quiet_moment() -> None:
    box = Box()
    collector = box.collector(busy=0.6, idle=0.1)
    box.count = (THRESHOLDS[0] * 3, 0, 0)
    for _ in range(3):  # a burst: 90% of each tick on the CPU, a collection due each tick
        box.later(0.1, 0.9)
        assert collector.tick() is None
    assert collector.frozen == 3 and box.collected == []
    assert box.calls == ["freeze"] * 3
    box.count = (THRESHOLDS[0] + 1, 0, 0)
    box.later(0.1, 0.3)  # streams still relayed: neither busy nor quiet
    assert collector.tick() == 0  # a young collection of what came since, as usual
    box.count = (5, 0, 0)
    box.later(0.1, 0.3)
    assert collector.tick() is None
    box.later(0.1, 0.05)  # quiet: what was frozen is thawed and collected in full
    assert collector.tick() == 2
    assert box.calls[3:] == ["collect 0", "unfreeze", "collect 2"]
    box.later(0.1, 0.0)  # and only once
    assert collector.tick() is None


def test_young_objects_far_past_the_threshold_are_frozen_before_the_cpu_shows_a_burst() -> None:
    box = Box()
    collector = box.collector(burst=2)
    box.count = (THRESHOLDS[0] * 2, 0, 0)
    box.later(0.1, 0.2)  # the tick before: not busy
    assert collector.tick() == 0  # past the threshold, not twice past it: collected
    box.count = (THRESHOLDS[0] * 2 + 1, 0, 0)
    box.later(0.1, 0.2)
    assert collector.tick() is None and collector.frozen == 1
    assert box.calls == ["collect 0", "freeze"]


def test_what_was_frozen_is_collected_after_max_frozen_seconds_however_busy() -> None:
    box = Box()
    collector = box.collector(max_frozen=5.0)
    box.count = (THRESHOLDS[0] + 1, 0, 0)
    box.later(0.1, 1.0)
    assert collector.tick() is None and box.calls == ["freeze"]
    box.count = (0, 0, 0)
    ticks = 1
    while True:
        box.later(0.1, 1.0)  # busy throughout
        ticks += 1
        if collector.tick() is not None:
            break
        assert ticks < 100
    assert 50 <= ticks <= 52 and box.calls == ["freeze", "unfreeze", "collect 2"]


def test_a_cycle_frozen_in_a_burst_is_freed_at_the_next_quiet_moment() -> None:
    """The real `gc`: a reference cycle that was young when a busy tick froze it outlives
    young collections, and the quiet tick's full collection frees it."""
    box = Box()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        collector = Collector(clock=lambda: box.wall, cpu=lambda: box.cpu)
        cycle = Cycle()
        dead = weakref.ref(cycle)
        del cycle
        alive = [[] for _ in range(THRESHOLDS[0] + 1000)]  # the young count past its threshold
        box.later(0.1, 1.0)
        assert collector.tick() is None and collector.frozen == 1
        gc.collect(0)
        assert dead() is not None  # frozen: no young collection sees it
        box.later(0.1, 0.0)
        assert collector.tick() == 2
        assert dead() is None
        del alive
    finally:
        gc.unfreeze()
        gc.enable() if was_enabled else gc.disable()


async def plain(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


class Cycle:
    def __init__(self) -> None:
        self.me = self


def test_the_server_runs_the_collector_from_its_tick_and_gives_gc_back_at_shutdown() -> None:
    """The real server: automatic collection off while it runs, a reference cycle still
    collected (by the tick) once enough objects have piled up, gc on again after."""

    async def run() -> tuple[bool, bool, int, bool]:
        sock = bind("127.0.0.1", 0)
        config = uvicorn.Config(plain, log_level="warning", lifespan="off")
        config.load()
        server = GatewayServer(config)
        server.lifespan = config.lifespan_class(config)  # as uvicorn's `_serve` does
        await server.startup(sockets=[sock])
        enabled_while_serving = gc.isenabled()
        cycle = Cycle()
        dead = weakref.ref(cycle)
        del cycle
        alive = [[] for _ in range(THRESHOLDS[0] + 1000)]  # the young count past its threshold
        ticks = 0
        while dead() is not None and ticks < 40:  # put off at most 1 s, the tick is 0.1 s
            await asyncio.sleep(0.1)
            await server.on_tick(ticks)
            ticks += 1
        collected = dead() is None
        del alive
        server.should_exit = True
        await server.shutdown(sockets=[sock])
        sock.close()
        return enabled_while_serving, collected, ticks, gc.isenabled()

    was_enabled = gc.isenabled()
    try:
        enabled_while_serving, collected, ticks, enabled_after = asyncio.run(run())
    finally:
        gc.enable() if was_enabled else gc.disable()
        gc.unfreeze()
    assert not enabled_while_serving
    assert collected, f"the cycle outlived {ticks} ticks"
    assert enabled_after
