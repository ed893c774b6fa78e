"""Metric values kept in plain Python by the gateway, handed to prometheus_client in bulk.

Each prometheus_client update of a finished request's metrics took a threading lock
(`MutexValue`), checked that the metric has its labels and, for a histogram, walked the
bucket bounds in Python: about a dozen such updates per request, 10-12 µs of the event
loop's CPU. The gateway updates these values from its event loop only (one thread per
process), so it keeps them itself: a `Cell` per counter or gauge child, a `Tally` per
histogram child, each a few attribute adds. `publish()` then writes what changed into the
child's own prometheus_client values, which render them as before: `Metrics` publishes
every cell right before rendering (one process), and with `--workers N`, where another
worker's scrape reads this one's files, those that changed at the end of each loop turn.

The arithmetic is prometheus_client's own, in the same order (`value += amount` from the
child's starting value, the bucket `observe()` would pick), so the exposition is the same
to the last bit (tests/observability/test_metrics_exposition.py). It relies on three
internals of prometheus_client's children (`_value`, `_buckets` and `_sum`, each with
`get`/`set`): `check_internals` verifies them when a child is made, so a release that
reshapes them fails at start-up and in the tests rather than miscounting (the dependency
is pinned to 0.26.x).
"""

from __future__ import annotations

from bisect import bisect_left
from itertools import compress
from typing import Any

from gateway.observability.records import Gaps


def check_internals(child: Any, *names: str) -> None:
    """Raise RuntimeError unless `child` has each of `names` as a value with get/set (or a
    list of them)."""
    for name in names:
        held = getattr(child, name, None)
        items = held if isinstance(held, list) else [held]
        if not items or not all(hasattr(v, "get") and hasattr(v, "set") for v in items):
            raise RuntimeError(
                f"prometheus_client's {type(child).__name__} has no {name} value as "
                "gateway.observability.tally expects: check the pinned version"
            )


class Cell:
    """A counter's or gauge's child: its value, and what of it prometheus_client has."""

    __slots__ = ("_shown", "_target", "value")

    def __init__(self, child: Any) -> None:
        check_internals(child, "_value")
        self._target = child._value
        # The child's starting value: 0.0, or in multiprocess mode what its file holds.
        self.value: float = self._target.get()
        self._shown = self.value

    def publish(self) -> None:
        if self.value != self._shown:
            self._target.set(self.value)
            self._shown = self.value


class Tally:
    """A histogram's child: its count per bucket (not cumulative, as prometheus_client keeps
    them) and the sum of what it observed."""

    __slots__ = ("_buckets", "_shown", "_shown_total", "_sum", "bounds", "counts", "total")

    def __init__(self, child: Any) -> None:
        check_internals(child, "_buckets", "_sum")
        bounds: list[float] = list(child._upper_bounds)
        self.bounds = tuple(bounds[:-1])
        """The finite upper bounds; a value above the last goes to +Inf's bucket."""
        self._buckets = child._buckets
        self._sum = child._sum
        self.counts: list[float] = [bucket.get() for bucket in self._buckets]
        self.total: float = self._sum.get()
        self._shown = list(self.counts)
        self._shown_total = self.total

    def observe(self, amount: float) -> None:
        """What `Histogram.observe` counts: the first bucket whose bound is not below
        `amount` (the same bucket its linear scan finds); NaN in no bucket but in the sum."""
        if amount == amount:
            self.counts[bisect_left(self.bounds, amount)] += 1
        self.total += amount

    def add(self, gaps: Gaps) -> None:
        """A stream's inter-token gaps, already counted per bucket (the histogram's bounds)."""
        counts, theirs = self.counts, gaps.counts
        # Only the buckets its gaps fell in (adding 0 would leave a count as it was), found
        # in C by `compress`: a stream's gaps fill a few of the 19, and adding all of them
        # made a new float for each (10k instructions per request against ~4k).
        for i in compress(range(len(theirs)), theirs):
            counts[i] += theirs[i]
        self.total += gaps.total

    def publish(self) -> None:
        counts, shown = self.counts, self._shown
        if counts != shown:
            for i, n in enumerate(counts):
                if n != shown[i]:
                    self._buckets[i].set(n)
                    shown[i] = n
        if self.total != self._shown_total:
            self._sum.set(self.total)
            self._shown_total = self.total
