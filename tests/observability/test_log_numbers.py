"""The request log line's numbers made without round() and datetime, to the same bits."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

from gateway.observability.records import round_to
from gateway.observability.requestlog import _Timestamps


def test_round_to_gives_exactly_what_round_gives_on_400_000_values() -> None:
    rng = random.Random(22)
    values = [0.0, -0.0, 0.004, -0.004, 0.005, 0.125, 2.675, 1.005, 1e-300, 5e-324, 0.5]
    values += [math.inf, -math.inf, math.nan, 1e11, 1e12, 1e13, 123456789.125, 2.0**53]
    values += [i / 1000 for i in range(100_000)]  # every decimal tie between 0 and 100
    values += [i / 10_000 + 0.00005 for i in range(50_000)]  # ties for 3 digits
    values += [
        rng.random() * 10 ** rng.randint(-8, 14) * rng.choice((1, -1)) for _ in range(150_000)
    ]
    values += [rng.random() * 1000 for _ in range(100_000)]  # milliseconds, as logged
    for digits in (2, 3):
        for v in values:
            # repr: the same float, sign of zero and NaN included.
            assert repr(round_to(v, digits)) == repr(round(v, digits)), (v, digits)


def reference(ended_at: float) -> str:
    stamp = datetime.fromtimestamp(ended_at, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def test_the_timestamp_is_what_datetime_writes_to_the_microsecond_s_rounding() -> None:
    rng = random.Random(22)
    stamps = _Timestamps()
    seconds = [0, 1, 59, 1_700_000_000, 1_765_000_000, 4_102_444_799, 951_782_400]
    ends = [s + f for s in seconds for f in (0.0, 0.0004, 0.0005, 0.9994999, 0.9995, 0.9999995)]
    ends += [s + k / 1e6 + d for s in seconds for k in range(0, 1_000_000, 997) for d in (0, 5e-7)]
    ends += [rng.uniform(0, 4e9) for _ in range(30_000)]
    ends += [1_765_000_000 + i * 0.0001 for i in range(20_000)]  # the memo of the second
    for ended_at in ends:
        assert stamps(ended_at) == reference(ended_at), ended_at
