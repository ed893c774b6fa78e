"""Upstream account limits: keep each deployment under its provider account's own rpm / tpm.

A deployment's `limits: {rpm, tpm}` are what the provider allows the gateway's account, not
what a client may use. The router asks `UpstreamLimits.acquire()` before each attempt and
`settle()`s the ticket when the attempt ends; `None` from `acquire` means "this deployment is
full even after waiting up to `wait` seconds: try another one". Three things decide:

1. What the upstream said. `observe()` reads OpenAI's `x-ratelimit-{limit,remaining,reset}-
   {requests,tokens}` (resets as Go durations: `20ms`, `1s`, `6m0s`) and Anthropic's
   `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}`
   (resets as RFC 3339 times). A remaining count of 0 with a reset makes `acquire` treat the
   deployment as full until then (it waits when that fits in `wait`, else answers None at
   once); `remaining()` gives the smallest fraction left for the router's preference.
   Per process: each replica learns from its own responses.
2. Smoothing within this process: an aiolimiter `AsyncLimiter` (a leaky bucket) per
   deployment drains at rpm / 60 requests a second and holds `burst_seconds` (1 by default)
   of that, at least one request. Providers enforce a minute's limit over shorter periods
   (OpenAI: "60,000 requests/minute may be enforced as 1,000 requests/second"; Anthropic
   replenishes a token bucket continuously), so a burst of 100 requests against rpm 600
   goes as 10 at once and then one every 100 ms, instead of 100 in the same millisecond
   and a string of 429s. Waiting here is first come, first served, bounded by `wait` and
   cancellable (aiolimiter drops a cancelled waiter; it never takes capacity).
3. The account's exact count, shared by every replica: the runtime's own `Limiter` (memory,
   Redis or Redis Cluster: the same atomic admission script as the client limits), with the
   deployment as one more key, `dep/NAME` (so Redis keys `gw:{dep/NAME}:rpm|tpm|...`, one
   hash tag and thus one Cluster slot per deployment; `/` is not allowed in the admin API's
   key ids, so no client key shares a deployment's counts). rpm is exact across replicas.
   tpm differs from the client limits on purpose: a client key is admitted while any of its
   allowance is left (overshooting by at most one reservation), an upstream account only
   when the request's estimate fits (`used + estimate <= tpm`), since the provider answers
   429 to the overshoot; the limit given to the script is `tpm - estimate + 1`, so "denied
   while used >= limit" means exactly "denied unless it fits". A request estimated above the
   whole tpm goes only into an empty window. The estimate is corrected to the real usage at
   `settle()`, in the second it was counted, as client tpm is. A denial says when room comes
   back; `acquire` sleeps that long when it fits in `wait`, else answers None at once.

Backend failure follows `limits_backend_failure` as the client limits do (it is the same
limiter): `open` gives a ticket marked degraded (smoothing and observed limits still apply,
and the backend error is counted), `closed` raises `LimiterUnavailable` (the caller answers
503, as the edge does for a client admission).

A caller that leaves while `acquire` waits frees its place: cancellation ends the wait, and
an admission already on its way to Redis is given back (tokens refunded, lease freed) when
its answer arrives; the request it counted stays counted (the script cannot tell it was
never sent: the count errs on the side of the limit). Every ticket must be settled once,
whatever happened (`tokens_used=0` for an attempt that never reached the provider).

Deliberately not here: choosing the deployment (the router), the health of a deployment and
a 429's `retry-after` (the router's cool-down), and sharing observed headers between
replicas (each replica's own responses are recent enough; the exact count is shared).
Memory: one small state per deployment key the caller names (the configured deployments).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from aiolimiter import AsyncLimiter

from gateway.config import KeyConfig, Limits
from gateway.limits.base import Admission, Limiter, RateState, Reservation
from gateway.limits.memory import WINDOW_S, MemoryLimiter

ACCOUNT_PREFIX = "dep/"
"""The limiter key id of a deployment is this + its key (`dep/openai-a/gpt-4o`)."""

MAX_OBSERVED_RESET_S = 3600.0
"""A reset further away than this is taken as this: a bogus header cannot shut a deployment
for days (OpenAI's longest window that matters here, requests per day, is reported as hours).
The router's cool-down on a 429's `retry-after` is capped by the same hour (`routing.health`)."""

OBSERVATION_TTL_S = float(WINDOW_S)
"""How long an observation without a reset (Azure sends remaining counts only) is used."""

RETRY_SLACK_S = 0.005
"""Added to a denial's retry time: Redis's clock and this host's may differ by a little."""

_REQUEST_ID = "upstream"
"""The limiter's `request_id` (for its logs only) on a deployment's admissions."""


def account_id(deployment_key: str) -> str:
    """The limiter key id that counts `deployment_key`'s account."""
    return ACCOUNT_PREFIX + deployment_key


@dataclass(eq=False)
class UpstreamTicket:
    """A granted `acquire`; handed back to `settle()` exactly once."""

    deployment_key: str
    tokens: int
    """The estimate counted against the account's tpm."""
    reservation: Reservation | None
    """What the limiter holds; None when the deployment has no rpm / tpm to count."""
    settled: bool = False

    @property
    def degraded(self) -> bool:
        """The limits backend was unreachable and `limits_backend_failure: open` let it go."""
        return self.reservation is not None and self.reservation.degraded


# --- reading the upstream's headers ----------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|us|µs|μs|ns|m|s)")
_UNIT_S = {
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "µs": 1e-6,  # micro sign
    "μs": 1e-6,  # Greek mu, as Go writes it
    "ns": 1e-9,
}
_MAX_VALUE_CHARS = 64
"""Longer header values are not rate-limit values: ignored, never parsed."""
_DURATIONS: dict[str, float] = {}
"""Go durations read before, and their seconds: they do not depend on `now`, and a failed
`float()` plus the pattern cost 1.4-2.1 µs a value against ~50 ns for the lookup (a timing
loop; two values per answer of an observed deployment). Kept stripped, so only a value
that came stripped is found here; at most `_DURATIONS_KEPT` of them."""
_DURATIONS_KEPT = 1024


def parse_reset(value: str, now: float) -> float | None:
    """Seconds from unix time `now` until a reset header's moment, None when unreadable.

    Reads Go durations as OpenAI writes them (`20ms`, `1s`, `6m0s`, `1h2m3.5s`), plain
    seconds (`12`, `0.5`), unix times (a number past 10^9) and RFC 3339 times as Anthropic
    writes them (`2025-01-15T14:24:00Z`)."""
    known = _DURATIONS.get(value)
    if known is not None:  # OpenAI's `6m0s`, `20ms`: a few values that repeat
        return known
    value = value.strip()
    if not value or len(value) > _MAX_VALUE_CHARS:
        return None
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(number) or number < 0:
            return None
        return max(number - now, 0.0) if number >= 1e9 else number
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(value):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        pos = match.end()
    if pos and pos == len(value):
        if len(_DURATIONS) < _DURATIONS_KEPT:
            _DURATIONS[value] = total
        return total
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return max(moment.timestamp() - now, 0.0)


RATE_LIMIT_PREFIXES = (b"x-ratelimit-", b"anthropic-ratelimit-")
"""The lower-cased beginnings of every field `observe` reads."""


class PrefixedFields(Protocol):
    """Headers that can hand over just the fields whose lower-cased names begin with one of
    some prefixes (the native transport's `FieldHeaders`): `observe` then looks its names
    up in those few, not in all of a real answer's ~24 fields."""

    def starting_with(self, prefixes: tuple[bytes, ...]) -> Mapping[str, str]: ...


def _count(value: str | None) -> int | None:
    if value is None or len(value) > _MAX_VALUE_CHARS:
        return None
    try:
        number = int(value.strip())
    except ValueError:
        return None
    return number if number >= 0 else None


class _Observed:
    """One dimension (requests, tokens, ...) as the upstream last reported it. Not a frozen
    dataclass: its `__init__` sets each field through `object.__setattr__`, ~8k instructions
    a report against ~3k here, and an observed deployment makes two on every answer. Never
    changed once made (a new report replaces it)."""

    __slots__ = ("limit", "remaining", "reset", "until")

    def __init__(self, remaining: int, limit: int | None, until: float, reset: bool) -> None:
        self.remaining = remaining
        self.limit = limit
        self.until = until
        """time.monotonic() after which the report is stale (its reset, or the TTL)."""
        self.reset = reset
        """The upstream gave a reset time (only then does remaining 0 block)."""


_OPENAI = (
    ("requests", "x-ratelimit-remaining-requests", "x-ratelimit-limit-requests",
     "x-ratelimit-reset-requests"),
    ("tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-limit-tokens",
     "x-ratelimit-reset-tokens"),
)  # fmt: skip
_ANTHROPIC = tuple(
    (
        dimension,
        f"anthropic-ratelimit-{dimension}-remaining",
        f"anthropic-ratelimit-{dimension}-limit",
        f"anthropic-ratelimit-{dimension}-reset",
    )
    for dimension in ("requests", "tokens", "input-tokens", "output-tokens")
)
_BY_REMAINING = {
    remaining_name: (dimension, limit_name, reset_name)
    for dimension, remaining_name, limit_name, reset_name in (*_OPENAI, *_ANTHROPIC)
}
"""Each dimension by the name of its remaining count: a dimension is read only when its
count came, so `observe` looks for those ~6 names in one set operation on the names that
came, not one lookup each (and none of a provider's other set)."""


# --- one deployment's state in this process --------------------------------------------------


class _Deployment:
    __slots__ = (
        "bucket",
        "bucket_rpm",
        "keys",
        "limits",
        "observed",
        "seen",
        "seen_at",
        "waiting",
    )

    def __init__(self) -> None:
        self.bucket: AsyncLimiter | None = None
        self.bucket_rpm = 0
        self.keys: dict[int | None, KeyConfig] = {}
        """Limiter keys by the tpm given to the script (one for an rpm-only deployment)."""
        self.limits = Limits()
        """The configured limits the caller passed last (for fractions without a limit
        header)."""
        self.observed: dict[str, _Observed] = {}
        self.seen: RateState | None = None
        """The account's counts as the last admission of this process found them."""
        self.seen_at = 0.0
        self.waiting = 0
        """Callers of this process waiting in the bucket."""

    def blocked_until(self, now: float) -> float:
        """time.monotonic() until which the upstream said it is full (0: not blocked)."""
        until = 0.0
        for report in self.observed.values():
            if report.reset and report.remaining == 0 and report.until > now:
                until = max(until, report.until)
        return until


class UpstreamLimits:
    """The upstream account limiter of every deployment (see the module docstring).

    `store`: the runtime's `Limiter` (the same backend as the client limits); None keeps
    the counts in a `MemoryLimiter` of this object's own (this process only).
    `burst_seconds`: how many seconds of rpm the smoothing bucket holds (at least one
    request); None turns smoothing off.
    """

    def __init__(
        self,
        store: Limiter | None,
        *,
        burst_seconds: float | None = 1.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._store: Limiter = store if store is not None else MemoryLimiter()
        # MemoryLimiter.admit never awaits, so nothing can cancel it half-way; a remote
        # admission can be, and is then given back when its answer comes (see _admit).
        self._remote = not isinstance(self._store, MemoryLimiter)
        self._burst_seconds = burst_seconds
        self._wall_clock = wall_clock
        self._deployments: dict[str, _Deployment] = {}
        self._orphans: set[asyncio.Future[Admission]] = set()
        """Admissions whose caller left before Redis answered: given back on arrival."""

    @property
    def store(self) -> Limiter:
        """The limiter the accounts are counted in."""
        return self._store

    async def aclose(self) -> None:
        """Wait (briefly) for the admissions still being given back: before the limiter
        closes, so their settles leave with it."""
        if self._orphans:
            await asyncio.wait(set(self._orphans), timeout=2.0)

    def _deployment(self, deployment_key: str) -> _Deployment:
        state = self._deployments.get(deployment_key)
        if state is None:
            state = self._deployments[deployment_key] = _Deployment()
        return state

    # --- the request path ----------------------------------------------------------------

    async def acquire(
        self, deployment_key: str, limits: Limits, tokens: int, wait: float
    ) -> UpstreamTicket | None:
        """A ticket for one attempt on `deployment_key`, waiting at most `wait` seconds for
        room; None when there is none by then (it answers at once when it can tell there
        will be none). `tokens`: the attempt's estimate (prompt + max output). Raises
        `LimiterUnavailable` when the backend is down and `limits_backend_failure` is
        `closed`. Cancelling it frees whatever it waited for or was given."""
        state = self._deployment(deployment_key)
        state.limits = limits
        tokens = max(tokens, 0)
        # One clock for deadlines and observed resets (an event loop's own, uvloop's say,
        # may round to the millisecond).
        deadline = time.monotonic() + (wait if wait > 0 else 0.0)
        if not await _sleep_until(state, deadline):
            return None
        rpm, tpm = limits.rpm, limits.tpm
        if rpm is not None and self._burst_seconds is not None:
            bucket = self._bucket(state, rpm)
            if not bucket.has_capacity():
                # Each caller already waiting takes one drip (1 / rate) before this one:
                # when those alone outlast `wait`, say so now rather than at the deadline.
                left = deadline - time.monotonic()
                if left <= 0 or state.waiting * bucket.time_period / bucket.max_rate > left:
                    return None
                state.waiting += 1
                try:
                    async with asyncio.timeout(left):
                        await bucket.acquire()
                except TimeoutError:
                    return None
                finally:
                    state.waiting -= 1
            else:
                await bucket.acquire()  # capacity is there: returns without suspending
        if rpm is None and tpm is None:
            return UpstreamTicket(deployment_key, tokens, None)
        key = self._key(state, deployment_key, limits, tokens)
        while True:
            if not await _sleep_until(state, deadline):
                return None
            admission = await self._admit(key, tokens)
            if admission.allowed:
                state.seen, state.seen_at = admission.state, time.monotonic()
                return UpstreamTicket(deployment_key, tokens, admission.reservation)
            state.seen, state.seen_at = admission.state, time.monotonic()
            retry = admission.retry_after + RETRY_SLACK_S
            if time.monotonic() + retry > deadline:
                return None
            await asyncio.sleep(retry)

    async def settle(self, ticket: UpstreamTicket, tokens_used: int) -> None:
        """Correct the ticket's estimate to the tokens the attempt really used (0 for one
        that never reached the provider) and free what it holds. Once per ticket; never
        raises (a backend failure is counted by the limiter)."""
        self.settle_soon(ticket, tokens_used)

    def settle_soon(self, ticket: UpstreamTicket, tokens_used: int) -> None:
        """`settle()` without awaiting: the limiter sends it in the background."""
        if ticket.settled:
            return
        ticket.settled = True
        if ticket.reservation is not None:
            self._store.settle_soon(ticket.reservation, max(tokens_used, 0))

    def observe(self, deployment_key: str, headers: Mapping[str, str]) -> None:
        """Take in an upstream response's rate-limit headers (OpenAI's or Anthropic's;
        `headers` looked up by lower-case name, as httpx.Headers or a dict of lower-cased
        names allow). Unreadable values are ignored."""
        narrow: Callable[[tuple[bytes, ...]], Mapping[str, str]] | None = getattr(
            headers, "starting_with", None
        )
        if narrow is not None:
            headers = narrow(RATE_LIMIT_PREFIXES)
            if not headers:
                return  # no rate-limit field at all (most answers of a head without them)
        # `keys() &`: the remaining counts that came, in one pass (a Mapping's keys are
        # exactly the names its `get` finds; httpx.Headers' are lower-cased, as ours).
        counts = headers.keys() & _BY_REMAINING.keys()
        if not counts:
            return
        observed: dict[str, _Observed] | None = None
        now = time.monotonic()
        wall = self._wall_clock()
        # OpenAI's names first (x- after anthropic-, reversed): when an answer carries both
        # sets (never seen), Anthropic's report of a dimension is the one kept, as ever.
        for remaining_name in sorted(counts, reverse=True):
            remaining = _count(headers.get(remaining_name))
            if remaining is None:
                continue
            dimension, limit_name, reset_name = _BY_REMAINING[remaining_name]
            reset_value = headers.get(reset_name)
            reset = None if reset_value is None else parse_reset(reset_value, wall)
            if reset is None:
                until, has_reset = now + OBSERVATION_TTL_S, False
            else:
                until, has_reset = now + min(reset, MAX_OBSERVED_RESET_S), True
            if observed is None:  # a state only for a deployment something was read of
                observed = self._deployment(deployment_key).observed
            observed[dimension] = _Observed(
                remaining, _count(headers.get(limit_name)), until, has_reset
            )

    def remaining(self, deployment_key: str) -> float | None:
        """The smallest fraction of the account's requests or tokens left, as the upstream
        last reported it or this process's last admission counted it (within the last
        minute); None when nothing is known."""
        state = self._deployments.get(deployment_key)
        if state is None:
            return None
        now = time.monotonic()
        fractions: list[float] = []
        for dimension, report in state.observed.items():
            if report.until <= now:
                continue
            if report.remaining == 0:
                fractions.append(0.0)
                continue
            limit = report.limit
            if not limit:  # the configured limit, for a report without a limit header
                if dimension == "requests":
                    limit = state.limits.rpm
                elif dimension == "tokens":
                    limit = state.limits.tpm
            if limit:
                fractions.append(min(report.remaining / limit, 1.0))
        seen = state.seen
        age = now - state.seen_at
        if seen is not None and age < WINDOW_S:
            # A used-up count says nothing more once its reset (room again) has passed.
            rpm_left = seen.remaining_requests
            limit = seen.limit_requests
            if limit and rpm_left is not None and (rpm_left > 0 or age < seen.reset_requests_s):
                fractions.append(rpm_left / limit)
            tpm = state.limits.tpm
            if tpm and seen.used_tokens is not None:
                # against the account's tpm (the script was given the fit limit)
                tpm_left = max(tpm - seen.used_tokens, 0)
                if tpm_left > 0 or age < seen.reset_tokens_s:
                    fractions.append(tpm_left / tpm)
        return min(fractions) if fractions else None

    # --- helpers ----------------------------------------------------------------------------

    def _bucket(self, state: _Deployment, rpm: int) -> AsyncLimiter:
        bucket = state.bucket
        if bucket is None or state.bucket_rpm != rpm:
            assert self._burst_seconds is not None
            per_second = max(rpm, 1) / 60.0
            capacity = max(1.0, per_second * self._burst_seconds)
            # aiolimiter's bucket holds `max_rate` and drains it over `time_period`.
            bucket = state.bucket = AsyncLimiter(capacity, capacity / per_second)
            state.bucket_rpm = rpm
        return bucket

    def _key(
        self, state: _Deployment, deployment_key: str, limits: Limits, tokens: int
    ) -> KeyConfig:
        """The limiter key for this admission: rpm as configured, tpm as the fit limit."""
        tpm = limits.tpm
        fit = None if tpm is None else tpm - min(tokens, tpm) + 1
        key = state.keys.get(fit)
        if key is None or key.limits.rpm != limits.rpm:
            key = KeyConfig(
                id=account_id(deployment_key), key_sha256="", limits=Limits(rpm=limits.rpm, tpm=fit)
            )
            if len(state.keys) >= 64:  # estimates vary: keep the cache small
                state.keys.clear()
            state.keys[fit] = key
        return key

    async def _admit(self, key: KeyConfig, tokens: int) -> Admission:
        if not self._remote:
            return await self._store.admit(key, tokens, _REQUEST_ID)
        # The script may run even if our caller leaves meanwhile: the admission is shielded
        # from the cancel and given back once it arrives.
        pending = asyncio.ensure_future(self._store.admit(key, tokens, _REQUEST_ID))
        try:
            return await asyncio.shield(pending)
        except asyncio.CancelledError:
            if not pending.done():
                self._orphans.add(pending)
                pending.add_done_callback(self._give_back)
            elif not pending.cancelled() and pending.exception() is None:
                self._give_back(pending)
            raise

    def _give_back(self, pending: asyncio.Future[Admission]) -> None:
        self._orphans.discard(pending)
        if pending.cancelled() or pending.exception() is not None:
            return  # nothing was granted (a backend error was counted by the limiter)
        reservation = pending.result().reservation
        if reservation is not None:
            self._store.settle_soon(reservation, 0)


async def _sleep_until(state: _Deployment, deadline: float) -> bool:
    """Wait out what the upstream said (remaining 0 until its reset) if it ends by
    `deadline` (time.monotonic()); False if it does not."""
    now = time.monotonic()
    until = state.blocked_until(now)
    if until <= now:
        return True
    if until > deadline:
        return False
    await asyncio.sleep(until - now)
    return True
