"""Python's cycle collector, run by the server between bursts instead of inside them.

CPython collects when the count of container objects allocated and not yet freed passes a
threshold, whatever the process is doing. A burst of new streams is exactly when that count
climbs: each open stream holds ~75 such objects for its whole life, so 3,000 streams arriving
together set off a dozen young collections and one of the middle generation while the
requests are being set up (~60 ms in `bench`'s `scale` burst, TTFT's p99 ~80-95 ms later),
and every one of them finds nothing to free: the objects are alive. A server knows better
when it has time to spare.

So the server turns automatic collection off (`gc.disable`) and the `Collector` runs the same
collections from the server's tick (every 0.1 s): with the same thresholds and the same
generation rules, but not while the process has spent most of the last tick's wall time on
the CPU (a burst, a flood), unless the young count has passed `cap` or a collection has
been put off for `max_delay` seconds. Garbage freed by reference counting (almost all of a
relay's) is freed at once as ever; only reference cycles (a cancelled stream's, an
exception's traceback) wait, and at most `cap` container objects or `max_delay` seconds.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

THRESHOLDS = (20_000, 10, 10)
"""Young objects before a collection; young collections before a middle one; middle ones
before a full one. The first is CPython's 700 raised: every relayed event allocates a few
short-lived objects. The others are CPython's: cancelled streams leave reference cycles, and
`bench.soak` showed RSS creeping for minutes with rarer full collections."""


class Collector:
    """Decides, once per server tick, whether to run the collector and which generation.

    `cpu` is the process's CPU time (`time.process_time`), `clock` wall time; both are read
    once a tick. `get_count` and `collect` are the `gc` module's (tests pass their own).
    """

    def __init__(
        self,
        *,
        thresholds: tuple[int, int, int] = THRESHOLDS,
        busy: float = 0.6,
        cap: int = 400_000,
        max_delay: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        cpu: Callable[[], float] = time.process_time,
        get_count: Callable[[], tuple[int, int, int]] = gc.get_count,
        collect: Callable[[int], int] = gc.collect,
    ) -> None:
        self.thresholds = thresholds
        self.busy = busy
        self.cap = cap
        self.max_delay = max_delay
        self._clock = clock
        self._cpu = cpu
        self._get_count = get_count
        self._collect = collect
        self._last_wall = clock()
        self._last_cpu = cpu()
        self._due_since: float | None = None
        """When the young count first passed its threshold without a collection since."""
        self.deferred = 0
        """Ticks that found a collection due and put it off (for tests and debugging)."""

    def tick(self) -> int | None:
        """Collect now if a collection is due and the process is not busy (or has waited
        long enough); the generation collected, or None."""
        wall, cpu = self._clock(), self._cpu()
        elapsed = wall - self._last_wall
        busy = elapsed > 0 and (cpu - self._last_cpu) / elapsed >= self.busy
        self._last_wall, self._last_cpu = wall, cpu
        young, middle, old = self._get_count()
        first, second, third = self.thresholds
        if young <= first:
            self._due_since = None
            return None
        if self._due_since is None:
            self._due_since = wall
        if busy and young < self.cap and wall - self._due_since < self.max_delay:
            self.deferred += 1
            return None
        # CPython's choice (gc_collect_generations): the oldest generation whose count has
        # passed its threshold (a young collection adds one to the middle count, a middle
        # one to the old count). CPython also skips a full collection while the objects that
        # survived middle ones since the last are under a quarter of the old generation, a
        # count it does not expose: here a full one runs every 100th collection (rarely:
        # every ~2M objects of net growth), and not while the process is busy.
        generation = 2 if old > third else 1 if middle > second else 0
        self._collect(generation)
        self._due_since = None
        return generation


def take_over() -> Collector:
    """Freeze what exists now (app, config, clients: alive as long as the process), turn
    automatic collection off and return the `Collector` the server's tick runs."""
    gc.freeze()
    gc.disable()
    return Collector()
