"""Per-key limits and quotas in Redis, shared by any number of gateway processes and hosts.

Each call is one round trip running one Lua script, so check-and-reserve is atomic
across every replica: `admit` checks max_concurrent, rpm, tpm, the daily and the monthly
quota and, only if all pass, counts the request, reserves the tokens and takes a lease;
`settle` corrects the reserved tokens in the admission's own tpm bucket and quota periods
and drops the lease. Time comes from the Redis server (`TIME` inside the script), so hosts
with skewed clocks agree on buckets, periods and lease expiry. The semantics are
`gateway.limits.base`'s, number for number the same as `MemoryLimiter`'s.

Key layout, all of one API key in one Redis Cluster slot thanks to the `{key id}` hash tag
(`gw` is the configurable prefix):

- `gw:{team-a}:rpm`    HASH unix second -> requests admitted in it; fields older than the
  60 s window are deleted by the script, the key expires 61 s after its last write.
- `gw:{team-a}:tpm`    HASH unix second -> tokens reserved (then settled) in it; same.
- `gw:{team-a}:quota`  HASH `day:2025-01-31` / `month:2025-01` -> tokens in that UTC
  period; the current and the previous period are kept (late settles land in the period
  of their admission), older fields are deleted; the key expires a day after the month.
- `gw:{team-a}:leases` ZSET lease id (`host:pid:instance:request id`) -> expiry in unix
  ms. admit drops expired leases before counting, usage ignores them; a background task
  renews this process's live leases every ttl/3, so a killed process frees its slots
  within the lease TTL. The key expires a second after the newest lease.

Backend failure (connection refused, timeouts, any Redis error): the `on_backend_error`
callback is called once per affected request, then `limits_backend_failure: open` admits
with a degraded reservation and an empty `RateState`, `closed` raises `LimiterUnavailable`.
After a failure Redis is skipped for `failure_backoff` seconds (each skipped request still
counts as a backend error), so a dead Redis costs no connect timeout per request; the
first call after that tries again, so recovery needs no restart. A settle that cannot
reach Redis leaves its reservation counted (quotas err on the side of the limit) and its
lease to expire by itself; `settle` never raises.

Deliberately not done: falling back to per-process limits when Redis is away (that would
silently multiply every limit by the number of replicas), resurrecting leases a restarted
Redis lost (renewal only extends leases that exist, so a settle racing a renewal can never
leak a slot), and `RedisCluster` client construction (the hash tags make the layout
Cluster-ready; the client here is a plain `redis.asyncio.Redis`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from gateway.config import BackendFailure, KeyConfig, Limits
from gateway.limits.base import (
    Admission,
    KeyUsage,
    LimiterUnavailable,
    LimitName,
    RateState,
    Reservation,
)
from gateway.limits.report import key_usage

_log = logging.getLogger(__name__)

BACKEND_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError)
"""What counts as "the backend is unreachable". Redis's own ConnectionError and
TimeoutError are RedisErrors; the builtin ones (and asyncio's) are OSErrors. Other Redis
errors (READONLY after a failover, OOM, LOADING) leave the limits just as unknown."""

_DENIED: dict[bytes, LimitName] = {
    b"max_concurrent": "max_concurrent",
    b"rpm": "rpm",
    b"tpm": "tpm",
    b"daily_tokens": "daily_tokens",
    b"monthly_tokens": "monthly_tokens",
}

# --- Lua -----------------------------------------------------------------------------------
# Shared by the scripts. Numbers are Lua doubles: unix ms (1.7e12) and token counts are far
# below 2^53. Fractions go back to Python as strings, since Redis truncates Lua numbers in
# replies to integers.
_LUA_PRELUDE = """
local function clock(override)
  if override ~= nil and override ~= '' then return tonumber(override) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- days since 1970-01-01 <-> proleptic Gregorian date (H. Hinnant's civil algorithms)
local function civil(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
                          - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m, d
end

local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

-- the UTC day and month containing unix time t: field names, and when each ends
local function periods(t)
  local day = math.floor(t / 86400)
  local y, m, d = civil(day)
  local ny, nm = y, m + 1
  if nm == 13 then ny, nm = y + 1, 1 end
  return string.format('day:%04d-%02d-%02d', y, m, d), (day + 1) * 86400,
         string.format('month:%04d-%02d', y, m), days_from_civil(ny, nm, 1) * 86400
end

-- the buckets of a window hash still inside the 60 s ending at second now_s, sorted by
-- second, and their total; buckets that left the window are deleted
local function window(key, now_s)
  local cutoff = now_s - 59
  local flat = redis.call('HGETALL', key)
  local buckets, total, stale = {}, 0, {}
  for i = 1, #flat, 2 do
    local s = tonumber(flat[i])
    if s < cutoff then
      stale[#stale + 1] = flat[i]
    else
      local c = tonumber(flat[i + 1])
      total = total + c
      buckets[#buckets + 1] = {s, c}
    end
  end
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  table.sort(buckets, function(a, b) return a[1] < b[1] end)
  return buckets, total
end
"""

_ADMIT = (
    _LUA_PRELUDE
    + """
-- KEYS: rpm, tpm, quota, leases
-- ARGV: rpm, tpm, max_concurrent, daily, monthly (-1: not limited), tokens, lease id,
--       lease ttl ms, time override ('' : the server's TIME)
local rpm, tpm, conc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local daily, monthly = tonumber(ARGV[4]), tonumber(ARGV[5])
local tokens, lease, ttl = tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8])
local now = clock(ARGV[9])
local now_s = math.floor(now)
local now_ms = now * 1000

-- seconds until the window's total is below threshold
local function wait_below(buckets, total, threshold)
  if total < threshold then return 0 end
  local left = total
  for i = 1, #buckets do
    left = left - buckets[i][2]
    if left < threshold then return buckets[i][1] + 60 - now end
  end
  return 0
end

-- seconds until the allowance grows (see MemoryLimiter's _Window.reset)
local function reset(buckets, total, limit)
  if limit < 0 or total <= 0 then return 0 end
  return wait_below(buckets, total, math.min(limit, total))
end

local function add(buckets, s, n)
  for i = 1, #buckets do
    if buckets[i][1] == s then buckets[i][2] = buckets[i][2] + n; return end
  end
  buckets[#buckets + 1] = {s, n}
  table.sort(buckets, function(a, b) return a[1] < b[1] end)
end

local denied, wait = '', 0
-- the binding limit keeps the caller out longest; on a tie the first checked wins
local function deny(name, seconds)
  if denied == '' or seconds > wait then denied, wait = name, seconds end
end

redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now_ms)
local open = redis.call('ZCARD', KEYS[4])
if conc >= 0 and open >= conc then deny('max_concurrent', 1) end
local rb, rt = window(KEYS[1], now_s)
if rpm >= 0 and rt >= rpm then deny('rpm', wait_below(rb, rt, rpm)) end
local tb, tt = window(KEYS[2], now_s)
if tpm >= 0 and tt >= tpm then deny('tpm', wait_below(tb, tt, tpm)) end
local day_f, day_end, month_f, month_end = periods(now)
local used = redis.call('HMGET', KEYS[3], day_f, month_f)
if daily >= 0 and (tonumber(used[1]) or 0) >= daily then deny('daily_tokens', day_end - now) end
if monthly >= 0 and (tonumber(used[2]) or 0) >= monthly then
  deny('monthly_tokens', month_end - now)
end

if denied == '' then
  local second = string.format('%d', now_s)
  redis.call('HINCRBY', KEYS[1], second, 1)
  redis.call('EXPIRE', KEYS[1], 61)
  add(rb, now_s, 1); rt = rt + 1
  redis.call('HINCRBY', KEYS[2], second, tokens)
  redis.call('EXPIRE', KEYS[2], 61)
  add(tb, now_s, tokens); tt = tt + tokens
  redis.call('HINCRBY', KEYS[3], day_f, tokens)
  redis.call('HINCRBY', KEYS[3], month_f, tokens)
  if redis.call('HLEN', KEYS[3]) > 4 then
    -- keep this and the previous day and month, for settles that straddle midnight
    local prev_day = periods(now - 86400)
    local y, m = civil(math.floor(now / 86400))
    local _, _, prev_month = periods((days_from_civil(y, m, 1) - 1) * 86400)
    local keep = {[day_f] = true, [month_f] = true, [prev_day] = true, [prev_month] = true}
    local old = {}
    for _, field in ipairs(redis.call('HKEYS', KEYS[3])) do
      if not keep[field] then old[#old + 1] = field end
    end
    if #old > 0 then redis.call('HDEL', KEYS[3], unpack(old)) end
  end
  -- relative, so a test's clock override gets the same lifetime as the server's TIME
  redis.call('EXPIRE', KEYS[3], string.format('%d', math.ceil(month_end + 86400 - now)))
  redis.call('ZADD', KEYS[4], string.format('%.3f', now_ms + ttl), lease)
  redis.call('PEXPIRE', KEYS[4], string.format('%d', ttl + 1000))
end

return {denied == '' and 1 or 0, denied, string.format('%.6f', wait),
        string.format('%.6f', now), rt, string.format('%.6f', reset(rb, rt, rpm)),
        tt, string.format('%.6f', reset(tb, tt, tpm))}
"""
)

_SETTLE = (
    _LUA_PRELUDE
    + """
-- KEYS: tpm, quota, leases
-- ARGV: admission unix time, used - reserved tokens, lease id
redis.call('ZREM', KEYS[3], ARGV[3])
local delta = tonumber(ARGV[2])
if delta ~= 0 then
  local at = tonumber(ARGV[1])
  -- only buckets and periods that still exist: one the window or the TTL already dropped
  -- counts nothing any more, and must not come back
  local function adjust(key, field)
    if redis.call('HEXISTS', key, field) == 1 then
      if redis.call('HINCRBY', key, field, delta) < 0 then redis.call('HSET', key, field, 0) end
    end
  end
  adjust(KEYS[1], string.format('%d', math.floor(at)))
  local day_f, _, month_f = periods(at)
  adjust(KEYS[2], day_f)
  adjust(KEYS[2], month_f)
end
return 1
"""
)

_USAGE = (
    _LUA_PRELUDE
    + """
-- KEYS: rpm, tpm, quota, leases; ARGV: time override ('' : the server's TIME)
local now = clock(ARGV[1])
local _, rt = window(KEYS[1], math.floor(now))
local _, tt = window(KEYS[2], math.floor(now))
local day_f, _, month_f = periods(now)
local used = redis.call('HMGET', KEYS[3], day_f, month_f)
local open = redis.call('ZCOUNT', KEYS[4], '(' .. string.format('%.3f', now * 1000), '+inf')
return {rt, tt, tonumber(used[1]) or 0, tonumber(used[2]) or 0, open}
"""
)

_RENEW = (
    _LUA_PRELUDE
    + """
-- KEYS: leases; ARGV: lease ttl ms, time override, lease ids...
local ttl = tonumber(ARGV[1])
local expiry = string.format('%.3f', clock(ARGV[2]) * 1000 + ttl)
for i = 3, #ARGV do
  -- XX: a lease settled (removed) meanwhile must stay removed
  redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], string.format('%d', ttl + 1000))
return 1
"""
)


class _Skipped(Exception):
    """Redis is not tried: the back-off after a failure is still running."""


def key_names(prefix: str, key_id: str) -> tuple[str, str, str, str]:
    """The rpm, tpm, quota and leases keys of one API key, all in one Cluster slot."""
    base = f"{prefix}:{{{key_id}}}:"
    return base + "rpm", base + "tpm", base + "quota", base + "leases"


def _limit(value: int | None) -> int:
    return -1 if value is None else value


class RedisLimiter:
    """The shared `Limiter`.

    `url`: a redis:// or rediss:// URL. `on_backend_error`: called once per request (or
    renewal) that found the backend unreachable; the app counts
    `gateway_limiter_backend_errors_total` with it. `failure_mode`: `open` admits when
    Redis is unreachable, `closed` raises `LimiterUnavailable`. `lease_ttl`: seconds a
    concurrency slot outlives its process. `socket_timeout`: connect and per-command
    timeout. `max_connections`: Redis calls in flight at once (more wait their turn).
    `failure_backoff`: seconds Redis is skipped after a failure. `prefix`: first part of
    every key name. `clock`: None uses the Redis server's clock (production); tests pass a
    callable returning unix time to drive the window and period arithmetic.
    """

    def __init__(
        self,
        url: str,
        *,
        on_backend_error: Callable[[], None],
        failure_mode: BackendFailure = "open",
        lease_ttl: float = 15.0,
        socket_timeout: float = 0.5,
        max_connections: int = 64,
        failure_backoff: float = 1.0,
        prefix: str = "gw",
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._on_backend_error = on_backend_error
        self._failure_mode = failure_mode
        self._lease_ttl = lease_ttl
        self._lease_ttl_ms = int(lease_ttl * 1000)
        self._failure_backoff = failure_backoff
        self._prefix = prefix
        self._clock = clock
        # No retries: a dead Redis must cost one short timeout, not several; the pool
        # replaces connections a restarted Redis closed when it hands them out.
        self._client = aioredis.Redis.from_url(
            url,
            max_connections=max_connections,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            retry=Retry(NoBackoff(), 0),
        )
        # Calls queue here rather than in the pool: an exhausted pool raises (which would
        # read as an outage), and redis-py's blocking pool wakes every waiter per release.
        self._slots = asyncio.Semaphore(max_connections)
        self._admit_script = self._client.register_script(_ADMIT)
        self._settle_script = self._client.register_script(_SETTLE)
        self._usage_script = self._client.register_script(_USAGE)
        self._renew_script = self._client.register_script(_RENEW)
        self._lease_prefix = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}:"
        self._leases: dict[str, set[str]] = {}
        """key id -> lease ids this process holds (what the renewal task renews)."""
        self._skip_until = 0.0
        """time.monotonic() before which Redis is not tried after a failure."""
        self._renewal: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._renewal is None:
            self._renewal = asyncio.create_task(
                self._renew_leases(), name="gateway-limits-lease-renewal"
            )
        try:
            # Loading the scripts now spares the first requests a NOSCRIPT round trip.
            async with self._slots:
                for script in (self._admit_script, self._settle_script, self._renew_script):
                    await self._client.script_load(script.script)
        except BACKEND_ERRORS as exc:
            # Not fatal: `open` mode serves without Redis, and readiness reports it.
            _log.warning("limits backend unreachable at start-up: %s", _describe(exc))

    async def aclose(self) -> None:
        task, self._renewal = self._renewal, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._client.aclose()

    async def ready(self) -> bool:
        try:
            async with self._slots:
                return bool(await self._client.ping())
        except BACKEND_ERRORS:
            return False

    # --- the request path ------------------------------------------------------------------

    async def admit(self, key: KeyConfig, tokens: int, request_id: str) -> Admission:
        limits = key.limits
        lease = self._lease_prefix + request_id
        try:
            reply = await self._call(
                self._admit_script,
                key_names(self._prefix, key.id),
                (
                    _limit(limits.rpm),
                    _limit(limits.tpm),
                    _limit(limits.max_concurrent),
                    _limit(limits.daily_tokens),
                    _limit(limits.monthly_tokens),
                    tokens,
                    lease,
                    self._lease_ttl_ms,
                    self._time_override(),
                ),
            )
        except _Skipped:
            return self._unavailable(key.id, tokens, request_id)
        except BACKEND_ERRORS as exc:
            self._failed(exc, "admit")
            return self._unavailable(key.id, tokens, request_id)
        self._recovered()
        allowed, denied, wait, now, requests, reset_requests, used_tokens, reset_tokens = reply
        state = _rate_state(
            limits, int(requests), float(reset_requests), int(used_tokens), float(reset_tokens)
        )
        if not allowed:
            return Admission(
                allowed=False, state=state, denied=_DENIED[denied], retry_after=float(wait)
            )
        self._leases.setdefault(key.id, set()).add(lease)
        return Admission(
            allowed=True,
            state=state,
            reservation=Reservation(
                key_id=key.id,
                request_id=request_id,
                tokens=tokens,
                admitted_at=float(now),
                lease=True,
            ),
        )

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        if reservation.degraded:
            return
        lease = self._lease_prefix + reservation.request_id
        # Forget the lease first: whatever happens below, this process stops renewing it,
        # so it expires by itself if the ZREM never arrives.
        held = self._leases.get(reservation.key_id)
        if held is not None:
            held.discard(lease)
            if not held:
                del self._leases[reservation.key_id]
        _, tpm_key, quota_key, leases_key = key_names(self._prefix, reservation.key_id)
        try:
            await self._call(
                self._settle_script,
                (tpm_key, quota_key, leases_key),
                (f"{reservation.admitted_at:.6f}", used_tokens - reservation.tokens, lease),
            )
        except _Skipped:
            self._on_backend_error()
            return
        except BACKEND_ERRORS as exc:
            self._failed(exc, "settle")
            self._on_backend_error()
            return
        self._recovered()

    async def usage(self, keys: tuple[KeyConfig, ...]) -> list[KeyUsage]:
        """Raises LimiterUnavailable when Redis cannot be read (there is no usage to
        report without it), whatever `limits_backend_failure` says."""
        try:
            async with self._slots, self._client.pipeline(transaction=False) as pipe:
                for key in keys:
                    await self._usage_script(
                        keys=key_names(self._prefix, key.id),
                        args=(self._time_override(),),
                        client=pipe,
                    )
                replies: list[Sequence[int]] = await pipe.execute()
        except BACKEND_ERRORS as exc:
            self._failed(exc, "usage")
            self._on_backend_error()
            raise LimiterUnavailable(f"limits backend unreachable: {_describe(exc)}") from None
        return [
            key_usage(
                key,
                requests_minute=int(r[0]),
                tokens_minute=int(r[1]),
                tokens_day=int(r[2]),
                tokens_month=int(r[3]),
                concurrent=int(r[4]),
            )
            for key, r in zip(keys, replies, strict=True)
        ]

    # --- failure handling ------------------------------------------------------------------

    def _backing_off(self) -> bool:
        return self._skip_until != 0.0 and time.monotonic() < self._skip_until

    async def _call(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """One script call (one round trip), at most `max_connections` at a time. Raises
        _Skipped within the back-off after a failure."""
        if self._backing_off():
            raise _Skipped
        async with self._slots:
            # An outage may have begun while this call waited its turn.
            if self._backing_off():
                raise _Skipped
            return await script(keys=keys, args=args)

    def _time_override(self) -> str:
        return "" if self._clock is None else f"{self._clock():.6f}"

    def _unavailable(self, key_id: str, tokens: int, request_id: str) -> Admission:
        self._on_backend_error()
        if self._failure_mode == "closed":
            raise LimiterUnavailable("the limits backend (Redis) is unreachable")
        return Admission(
            allowed=True,
            state=RateState(),
            reservation=Reservation(
                key_id=key_id,
                request_id=request_id,
                tokens=tokens,
                admitted_at=time.time(),
                degraded=True,
            ),
        )

    def _failed(self, exc: BaseException, during: str) -> None:
        if not self._skip_until:
            # Log the start of an outage once, not every request during it.
            _log.warning(
                "limits backend unreachable during %s (%s); limits_backend_failure=%s",
                during,
                _describe(exc),
                self._failure_mode,
            )
        self._skip_until = time.monotonic() + self._failure_backoff

    def _recovered(self) -> None:
        if self._skip_until:
            self._skip_until = 0.0
            _log.info("limits backend reachable again")

    # --- lease renewal ---------------------------------------------------------------------

    async def _renew_leases(self) -> None:
        interval = self._lease_ttl / 3
        while True:
            await asyncio.sleep(interval)
            if not self._leases:
                continue
            try:
                await self._renew_once()
            except BACKEND_ERRORS as exc:
                # Leases this process cannot renew expire by themselves; concurrency is
                # then under-counted until Redis answers again, never over-counted.
                self._failed(exc, "lease renewal")
                self._on_backend_error()
            except Exception:
                # The loop must outlive a surprise, or every lease would silently lapse.
                _log.exception("lease renewal failed")

    async def _renew_once(self) -> None:
        snapshot = [(key_id, list(ids)) for key_id, ids in self._leases.items() if ids]
        override = self._time_override()
        async with self._slots, self._client.pipeline(transaction=False) as pipe:
            for key_id, ids in snapshot:
                await self._renew_script(
                    keys=(key_names(self._prefix, key_id)[3],),
                    args=(self._lease_ttl_ms, override, *ids),
                    client=pipe,
                )
            await pipe.execute()


def _rate_state(
    limits: Limits, requests: int, reset_requests: float, tokens: int, reset_tokens: float
) -> RateState:
    rpm, tpm = limits.rpm, limits.tpm
    return RateState(
        limit_requests=rpm,
        remaining_requests=None if rpm is None else max(rpm - requests, 0),
        reset_requests_s=0.0 if rpm is None else reset_requests,
        limit_tokens=tpm,
        remaining_tokens=None if tpm is None else max(tpm - tokens, 0),
        reset_tokens_s=0.0 if tpm is None else reset_tokens,
    )


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
