"""Python's cycle collector, run by the server between bursts instead of inside them.

CPython collects when the count of container objects allocated and not yet freed passes a
threshold, whatever the process is doing. A burst of new streams is exactly when that count
climbs: each open stream holds ~75 such objects for its whole life, so 3,000 streams arriving
together set off a dozen young collections and one of the middle generation while the
requests are being set up (~60 ms in `bench`'s `scale` burst, TTFT's p99 ~80-95 ms later),
and every one of them finds nothing to free: the objects are alive. A server knows better
when it has time to spare.

So the server turns automatic collection off (`gc.disable`) and the `Collector` runs the same
collections from the server's tick (every 0.1 s), with the same thresholds and generation
rules, unless the process spent most of the last tick's wall time on the CPU (a burst, a
flood) or the young objects are past `burst` times their threshold (a burst's first tick,
whose CPU shows only at the next). Then the due collection is not run: its objects are
frozen (`gc.freeze`, which moves them out of every generation without looking at them).
Putting the collection off instead, as before, only made it longer when it came: a young
collection of the ~225,000 objects of 3,000 streams stopped the loop for 20-48 ms a second
into the streams, one late token on every stream. What was frozen (the start-up objects
`take_over` froze too) gets a full collection at the first tick the process is nearly idle,
or at the latest `max_frozen` seconds after it was first frozen (after a 3,000-stream burst,
with 3,000 idle upstream connections kept: 40-52 ms, once the streams were over). Garbage
freed by reference counting (almost all of a relay's) is freed at once as ever; only
reference cycles (a cancelled stream's, an exception's traceback) wait, those frozen until
the next quiet moment.
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
    """Decides, once per server tick, whether to collect, which generation, or to freeze.

    `cpu` is the process's CPU time (`time.process_time`), `clock` wall time; both are read
    once a tick. `get_count`, `collect`, `freeze` and `unfreeze` are the `gc` module's
    (tests pass their own).
    """

    def __init__(
        self,
        *,
        thresholds: tuple[int, int, int] = THRESHOLDS,
        busy: float = 0.6,
        idle: float = 0.1,
        burst: int = 2,
        max_frozen: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        cpu: Callable[[], float] = time.process_time,
        get_count: Callable[[], tuple[int, int, int]] = gc.get_count,
        collect: Callable[[int], int] = gc.collect,
        freeze: Callable[[], None] = gc.freeze,
        unfreeze: Callable[[], None] = gc.unfreeze,
    ) -> None:
        self.thresholds = thresholds
        self.busy = busy
        self.idle = idle
        self.burst = burst
        self.max_frozen = max_frozen
        self._clock = clock
        self._cpu = cpu
        self._get_count = get_count
        self._collect = collect
        self._freeze = freeze
        self._unfreeze = unfreeze
        self._last_wall = clock()
        self._last_cpu = cpu()
        self._frozen_since: float | None = None
        """When objects were first frozen in place of a collection, since the last full one."""
        self.frozen = 0
        """Collections replaced by a freeze (for tests and debugging)."""

    def tick(self) -> int | None:
        """Collect, or freeze, if a collection is due; the generation collected, or None."""
        wall, cpu = self._clock(), self._cpu()
        elapsed = wall - self._last_wall
        share = (cpu - self._last_cpu) / elapsed if elapsed > 0 else 0.0
        self._last_wall, self._last_cpu = wall, cpu
        if self._frozen_since is not None and (
            share < self.idle or wall - self._frozen_since >= self.max_frozen
        ):
            # What a busy stretch froze, collected at a quiet moment (or at the latest).
            self._unfreeze()
            self._collect(2)
            self._frozen_since = None
            return 2
        young, middle, old = self._get_count()
        first, second, third = self.thresholds
        if young <= first:
            return None
        if share >= self.busy or young > self.burst * first:
            # Busy, or the young objects piled up faster than a tick's worth (the first tick
            # of a burst, before its CPU shows): frozen, not looked at.
            self._freeze()
            self.frozen += 1
            if self._frozen_since is None:
                self._frozen_since = wall
            return None
        # CPython's choice (gc_collect_generations): the oldest generation whose count has
        # passed its threshold (a young collection adds one to the middle count, a middle
        # one to the old count). CPython also skips a full collection while the objects that
        # survived middle ones since the last are under a quarter of the old generation, a
        # count it does not expose: here a full one runs every 100th collection (rarely:
        # every ~2M objects of net growth).
        generation = 2 if old > third else 1 if middle > second else 0
        self._collect(generation)
        return generation


def take_over() -> Collector:
    """Freeze what exists now (app, config, clients: alive as long as the process), turn
    automatic collection off and return the `Collector` the server's tick runs."""
    gc.freeze()
    gc.disable()
    return Collector()
