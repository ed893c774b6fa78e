"""Per-key limits and quotas kept in this process's memory (the embedded default).

`MemoryLimiter` implements `gateway.limits.base`'s semantics exactly as `RedisLimiter`
does, number for number, so one test suite runs against both:

- rpm / tpm: one-second buckets; the window is the 60 buckets ending with the current
  second. A bucket written at second `s` leaves the window at `s + 60`.
- daily / monthly token quotas: counters per UTC day and calendar month; the counters of
  the current and the previous period are kept (a stream admitted before midnight settles
  into the day it was admitted in), older ones are dropped.
- daily / monthly budgets: nano-dollar counters per UTC day and month, kept like the token
  quotas'.
- max_concurrent: the set of open leases, each id minted here per admission (a client's
  x-request-id is no identity: repeated, it must not share a slot); settle() removes one.
- A denial names the limit that keeps the caller waiting longest, and `retry_after` is that
  wait (rpm / tpm: until enough buckets leave the window; quotas: the period's end;
  max_concurrent: 1 s, since nobody knows when a stream ends).
- `RateState` resets (the `x-ratelimit-reset-*` headers): when the limit is used up, the
  time until the count falls below it again; otherwise the time until the oldest counted
  bucket leaves the window (the next moment the remaining allowance grows).

What it deliberately does not do:

- Share anything between processes: `gateway serve --workers 4` with it gives each worker
  its own limits. Use Redis (`REDIS_URL`) for limits that hold across processes.
- Use aiolimiter. Its leaky bucket drains continuously and makes callers wait, while the
  semantics here are a counted rolling window that answers at once with a denial and a
  retry-after; using it would make the two backends disagree on who is admitted.
- Expire leases: the process that holds a lease is the one that keeps this memory, so a
  lease lives exactly until settle().
- Await anything. admit() and settle() are plain Python run in one step of the event loop,
  which is what makes check-and-reserve atomic here.

Memory stays bounded: windows hold at most 60 buckets per key, quota counters two
periods per key, and there is one state per configured key id.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from datetime import UTC, datetime

from gateway.config import KeyConfig, Limits
from gateway.limits.base import Admission, KeyUsage, LimitName, RateState, Reservation
from gateway.limits.report import key_usage

WINDOW_S = 60
"""Length of the rpm / tpm rolling window, in one-second buckets."""
CONCURRENCY_RETRY_S = 1.0
"""retry-after for a max_concurrent denial: a stream's end cannot be predicted."""


class _Window:
    """Counts per second over the last `WINDOW_S` seconds, with a running total."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        # Insertion order is second order while the clock moves forward, so pruning only
        # ever looks at the front.
        self.counts: dict[int, int] = {}
        self.total = 0

    def prune(self, now_s: int) -> None:
        cutoff = now_s - WINDOW_S + 1
        counts = self.counts
        while counts:
            first = next(iter(counts))
            if first >= cutoff:
                break
            self.total -= counts.pop(first)

    def add(self, second: int, amount: int) -> None:
        self.counts[second] = self.counts.get(second, 0) + amount
        self.total += amount

    def adjust(self, second: int, delta: int) -> None:
        """Correct a bucket still in the window; one that already left counts nothing."""
        old = self.counts.get(second)
        if old is None:
            return
        new = max(old + delta, 0)
        self.counts[second] = new
        self.total += new - old

    def wait_below(self, now: float, threshold: int) -> float:
        """Seconds until the window's total is below `threshold`."""
        if self.total < threshold:
            return 0.0
        left = self.total
        for second in sorted(self.counts):
            left -= self.counts[second]
            if left < threshold:
                return second + WINDOW_S - now
        return 0.0

    def reset(self, now: float, limit: int) -> float:
        """Seconds until the remaining allowance grows: until the total is below the limit
        when it is used up, else until the oldest counted bucket leaves the window."""
        if self.total <= 0:
            return 0.0
        return self.wait_below(now, min(limit, self.total))


class _KeyState:
    __slots__ = ("days", "leases", "months", "requests", "spend_days", "spend_months", "tokens")

    def __init__(self) -> None:
        self.requests = _Window()
        self.tokens = _Window()
        self.days: dict[int, int] = {}
        self.months: dict[int, int] = {}
        self.spend_days: dict[int, int] = {}
        self.spend_months: dict[int, int] = {}
        """Nano-dollars spent (reservations included) per UTC day / month."""
        self.leases: set[str] = set()


def utc_periods(t: float) -> tuple[int, float, int, float]:
    """The UTC day and calendar month containing unix time `t`.

    Returns (day number since 1970-01-01, end of that day, month number as
    year * 12 + month - 1, end of that month), ends as unix times.
    """
    day = int(t // 86400)
    date = datetime.fromtimestamp(day * 86400, UTC)
    month = date.year * 12 + date.month - 1
    next_year, next_month = divmod(month + 1, 12)
    month_end = datetime(next_year, next_month + 1, 1, tzinfo=UTC).timestamp()
    return day, float((day + 1) * 86400), month, month_end


class MemoryLimiter:
    """The in-process `Limiter`. `clock` returns unix time; tests pass a controllable one."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._keys: dict[str, _KeyState] = {}
        # The periods of the last lookup: nearly every call falls in the same day.
        self._periods: tuple[int, float, int, float] = (0, 0.0, 0, 0.0)
        self._lease_ids = itertools.count(1)
        """Lease ids, one per admission, unique for this limiter's life."""

    async def start(self) -> None:
        """Nothing to open."""

    async def aclose(self) -> None:
        """Nothing to close."""

    async def ready(self) -> bool:
        return True

    def _periods_at(self, t: float) -> tuple[int, float, int, float]:
        cached = self._periods
        if cached[0] * 86400 <= t < cached[1]:
            return cached
        self._periods = utc_periods(t)
        return self._periods

    def _state(self, key_id: str) -> _KeyState:
        state = self._keys.get(key_id)
        if state is None:
            state = self._keys[key_id] = _KeyState()
        return state

    async def admit(self, key: KeyConfig, tokens: int, request_id: str, cost: int = 0) -> Admission:
        now = self._clock()
        now_s = int(now // 1)
        state = self._state(key.id)
        requests, token_window = state.requests, state.tokens
        requests.prune(now_s)
        token_window.prune(now_s)
        day, day_end, month, month_end = self._periods_at(now)
        limits = key.limits

        denied: LimitName | None = None
        wait = 0.0
        checks: list[tuple[LimitName, float]] = []
        if limits.max_concurrent is not None and len(state.leases) >= limits.max_concurrent:
            checks.append(("max_concurrent", CONCURRENCY_RETRY_S))
        if limits.rpm is not None and requests.total >= limits.rpm:
            checks.append(("rpm", requests.wait_below(now, limits.rpm)))
        if limits.tpm is not None and token_window.total >= limits.tpm:
            checks.append(("tpm", token_window.wait_below(now, limits.tpm)))
        if limits.daily_tokens is not None and state.days.get(day, 0) >= limits.daily_tokens:
            checks.append(("daily_tokens", day_end - now))
        if (
            limits.monthly_tokens is not None
            and state.months.get(month, 0) >= limits.monthly_tokens
        ):
            checks.append(("monthly_tokens", month_end - now))
        budget = key.budget
        if budget is not None:
            daily_usd, monthly_usd = budget.daily_nanos, budget.monthly_nanos
            if daily_usd is not None and state.spend_days.get(day, 0) >= daily_usd:
                checks.append(("daily_usd", day_end - now))
            if monthly_usd is not None and state.spend_months.get(month, 0) >= monthly_usd:
                checks.append(("monthly_usd", month_end - now))
        for name, seconds in checks:
            # The binding limit is the one that keeps the caller out longest; on a tie the
            # first checked wins, the same order the Redis script uses.
            if denied is None or seconds > wait:
                denied, wait = name, seconds
        if denied is not None:
            return Admission(
                allowed=False,
                state=_rate_state(limits, requests, token_window, now),
                denied=denied,
                retry_after=wait,
            )

        requests.add(now_s, 1)
        token_window.add(now_s, tokens)
        _count_period(state.days, day, tokens)
        _count_period(state.months, month, tokens)
        _count_period(state.spend_days, day, cost)
        _count_period(state.spend_months, month, cost)
        lease = str(next(self._lease_ids))
        state.leases.add(lease)
        return Admission(
            allowed=True,
            state=_rate_state(limits, requests, token_window, now),
            reservation=Reservation(
                key_id=key.id,
                request_id=request_id,
                tokens=tokens,
                admitted_at=now,
                cost=cost,
                lease=lease,
            ),
        )

    async def settle(self, reservation: Reservation, used_tokens: int, used_cost: int = 0) -> None:
        self.settle_soon(reservation, used_tokens, used_cost)

    def settle_soon(self, reservation: Reservation, used_tokens: int, used_cost: int = 0) -> None:
        if reservation.degraded:
            return
        state = self._keys.get(reservation.key_id)
        if state is None:
            return
        state.leases.discard(reservation.lease)
        delta = used_tokens - reservation.tokens
        spent = used_cost - reservation.cost
        if delta == 0 and spent == 0:
            return
        at = reservation.admitted_at
        day, _, month, _ = self._periods_at(at)
        if delta:
            state.tokens.adjust(int(at // 1), delta)
            _adjust_period(state.days, day, delta)
            _adjust_period(state.months, month, delta)
        if spent:
            _adjust_period(state.spend_days, day, spent)
            _adjust_period(state.spend_months, month, spent)

    async def usage(self, keys: tuple[KeyConfig, ...]) -> list[KeyUsage]:
        now = self._clock()
        now_s = int(now // 1)
        day, _, month, _ = self._periods_at(now)
        result = []
        for key in keys:
            state = self._state(key.id)
            state.requests.prune(now_s)
            state.tokens.prune(now_s)
            result.append(
                key_usage(
                    key,
                    requests_minute=state.requests.total,
                    tokens_minute=state.tokens.total,
                    tokens_day=state.days.get(day, 0),
                    tokens_month=state.months.get(month, 0),
                    concurrent=len(state.leases),
                    spend_day_nanos=state.spend_days.get(day, 0),
                    spend_month_nanos=state.spend_months.get(month, 0),
                )
            )
        return result


def _count_period(counts: dict[int, int], period: int, tokens: int) -> None:
    if period not in counts:
        # A new period began: keep only the previous one, for settles that straddle it.
        for old in [p for p in counts if p < period - 1]:
            del counts[old]
    counts[period] = counts.get(period, 0) + tokens


def _adjust_period(counts: dict[int, int], period: int, delta: int) -> None:
    old = counts.get(period)
    if old is not None:
        counts[period] = max(old + delta, 0)


def _rate_state(limits: Limits, requests: _Window, tokens: _Window, now: float) -> RateState:
    rpm, tpm = limits.rpm, limits.tpm
    return RateState(
        limit_requests=rpm,
        remaining_requests=None if rpm is None else max(rpm - requests.total, 0),
        reset_requests_s=0.0 if rpm is None else requests.reset(now, rpm),
        limit_tokens=tpm,
        remaining_tokens=None if tpm is None else max(tpm - tokens.total, 0),
        reset_tokens_s=0.0 if tpm is None else tokens.reset(now, tpm),
        used_tokens=None if tpm is None else tokens.total,
    )
