"""Per-key limits and quotas in Redis, shared by any number of gateway processes and hosts.

Each call is one round trip running one Lua script (over `gateway.limits.resp`: one
pipelined connection, so concurrent admissions share writes; admissions of one key made
while the connection is busy leave as one script call per key and loop turn, with the
results of calls made in turn: `gateway.limits.redis_admit`; settles, which nobody waits
for, wait up to `SETTLE_DELAY_S` and leave as one script call settling them all, or ride in
the next admission's call: `gateway.limits.redis_settle`), so check-and-reserve is
atomic across every replica: `admit` checks max_concurrent, rpm, tpm, the daily and the
monthly quota and, only if all pass, counts the request, reserves the tokens and takes a
lease; `settle` corrects the reserved tokens in the admission's own tpm bucket and quota
periods and drops the lease. Time comes from the Redis server (`TIME` inside the script), so hosts
with skewed clocks agree on buckets, periods and lease expiry. The semantics are
`gateway.limits.base`'s, number for number the same as `MemoryLimiter`'s.

A Redis Cluster (`redis+cluster://host:port[,host:port...]`) gets `gateway.limits.cluster`
instead, with the same scripts and keys. A plain `redis://` URL that reaches a Cluster node
(its INFO says `cluster_enabled:1`, or it answers MOVED / ASK) would enforce the limits of
that node's slots only: it is logged once as an error naming the fix, `ready()` is False,
and every admission takes the backend-failure path until readiness finds a plain Redis.
`ready()` runs the usage script on a reserved key (`READINESS_KEY`), so readiness follows
the admission path (scripts loaded and allowed, the slot's master reachable), not a PING.

Key layout, all of one API key in one Redis Cluster slot thanks to the `{key id}` hash tag
(`gw` is the configurable prefix):

- `gw:{team-a}:rpm`    HASH unix second -> requests admitted in it, and `sum` -> their
  total over the 60 s window; buckets are deleted (and taken off `sum`) as they leave it,
  the key expires 61 s after the first admission of its newest second.
- `gw:{team-a}:tpm`    HASH unix second -> tokens reserved (then settled) in it, and `sum`;
  same.
- `gw:{team-a}:seconds` ZSET the seconds that have rpm / tpm buckets (both windows get
  theirs together), so moving the window on reads only the buckets that left it; same
  expiry.
- `gw:{team-a}:quota`  HASH `day:2025-01-31` / `month:2025-01` -> tokens in that UTC
  period, and `usd:day:2025-01-31` / `usd:month:2025-01` -> nano-dollars spent in it
  (fields added by the first admission with a cost); the current and the previous period
  are kept (late settles land in the period of their admission), older fields are
  deleted; the key expires a day after the month.
- `gw:{team-a}:leases` ZSET lease id (`host:pid:instance:n`, n counting this limiter's
  admissions: minted here, never the client's x-request-id) -> expiry in unix
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
leak a slot), and Sentinel (refused at start-up by the config).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence

from redis.exceptions import ResponseError

from gateway.config import BackendFailure, Budget, KeyConfig, Limits
from gateway.limits import redis_lua
from gateway.limits.base import (
    Admission,
    KeyUsage,
    LimiterUnavailable,
    LimitName,
    RateState,
    Reservation,
)
from gateway.limits.cluster import ClusterClient
from gateway.limits.redis_admit import AdmitBatches, call_with_settles
from gateway.limits.redis_admit import admit_args as _admit_args
from gateway.limits.redis_settle import (
    BACKEND_ERRORS,
    SETTLES_PER_CALL,
    SettleQueue,
)
from gateway.limits.report import key_usage
from gateway.limits.resp import Client, RespClient, Script, is_noscript, pack_items
from gateway.redis_url import is_cluster_url

_log = logging.getLogger(__name__)

_CLUSTER_REPLIES = ("MOVED", "ASK", "CLUSTERDOWN", "CROSSSLOT")
"""Replies only a Redis Cluster node gives: a plain redis:// URL points at a Cluster."""

READINESS_KEY = "_readyz"
"""The API key id whose (empty) keys `ready()` reads through the admission path."""

_DENIED: dict[bytes, LimitName] = {
    b"max_concurrent": "max_concurrent",
    b"rpm": "rpm",
    b"tpm": "tpm",
    b"daily_tokens": "daily_tokens",
    b"monthly_tokens": "monthly_tokens",
    b"daily_usd": "daily_usd",
    b"monthly_usd": "monthly_usd",
}


def key_names(prefix: str, key_id: str) -> tuple[str, str, str, str, str]:
    """The rpm, tpm, quota, leases and seconds keys of one API key, all in one Cluster
    slot."""
    base = f"{prefix}:{{{key_id}}}:"
    return base + "rpm", base + "tpm", base + "quota", base + "leases", base + "seconds"


def _limit(value: int | None) -> int:
    return -1 if value is None else value


class RedisLimiter:
    """The shared `Limiter`.

    `url`: a redis://, rediss://, unix:// or redis+cluster:// / rediss+cluster:// URL.
    `on_backend_error`: called once per request (or renewal) that found the backend
    unreachable; the app counts
    `gateway_limiter_backend_errors_total` with it. `failure_mode`: `open` admits when
    Redis is unreachable, `closed` raises `LimiterUnavailable`. `lease_ttl`: seconds a
    concurrency slot outlives its process. `socket_timeout`: connect and per-command
    timeout. `failure_backoff`: seconds Redis is skipped after a failure. `prefix`: first
    part of every key name. `clock`: None uses the Redis server's clock (production); tests pass a
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
        # One pipelined connection (gateway.limits.resp); no retries: a dead Redis must
        # cost one short timeout, not several. A Cluster URL gets redis-py's Cluster
        # client instead (gateway.limits.cluster says why).
        self._cluster = is_cluster_url(url)
        self._resp = None if self._cluster else RespClient(url, timeout=socket_timeout)
        """The one server's client; None on a Cluster."""
        self._client: Client = self._resp or ClusterClient(url, timeout=socket_timeout)
        self._cluster_node = False
        """A plain URL reached a Cluster node: admissions do not try Redis (they would be
        exact for that node's slots only) until readiness finds a plain server again."""
        self._admit_script = Script(self._client, redis_lua.ADMIT)
        self._admit_many_script = Script(self._client, redis_lua.ADMIT_MANY)
        self._settle_script = Script(self._client, redis_lua.SETTLE)
        self._usage_script = Script(self._client, redis_lua.USAGE)
        self._renew_script = Script(self._client, redis_lua.RENEW)
        self._lease_prefix = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}:"
        self._lease_ids = itertools.count(1)
        """The end of each lease id: one per admission (see the key layout above)."""
        self._leases: dict[str, set[str]] = {}
        """key id -> lease ids this process holds (what the renewal task renews)."""
        self._skip_until = 0.0
        """time.monotonic() before which Redis is not tried after a failure."""
        self._renewal: asyncio.Task[None] | None = None
        self._admit_heads: dict[str, tuple[Limits, Budget | None, bytes, bytes, bytes]] = {}
        """key id -> the packed start of its admit calls (the same every time), and its
        packed keys and fixed arguments (for a call carrying waiting settles too)."""
        self._settles = SettleQueue(
            self._client,
            self._settle_script,
            cluster=self._cluster,
            keys=lambda key_id: key_names(prefix, key_id)[1:4],
            failed=self._settle_failed,
            recovered=self._recovered,
        )
        """Settles not sent yet (or not answered yet)."""
        self._batches = AdmitBatches(
            self._client,
            self._admit_script,
            self._admit_many_script,
            self._settles,
            self._count_errors,
        )
        """Admissions waiting to leave as one call per key (or not answered yet)."""
        self._batching = self._lease_ttl_ms > 0
        """ADMIT_MANY counts each lease it grants as open for the next admission, which
        holds for leases that outlive the instant of the batch (a ttl of 1 ms or more)."""

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._renewal is None:
            self._renewal = asyncio.create_task(
                self._renew_leases(), name="gateway-limits-lease-renewal"
            )
        try:
            # Loading the scripts now spares the first requests a NOSCRIPT round trip.
            scripts = (
                self._admit_script,
                self._admit_many_script,
                self._settle_script,
                self._usage_script,
                self._renew_script,
            )
            await asyncio.gather(*(script.load() for script in scripts))
            if not self._cluster:
                await self._single_node()
        except BACKEND_ERRORS as exc:
            # Not fatal: `open` mode serves without Redis, and readiness reports it.
            _log.warning("limits backend unreachable at start-up: %s", _describe(exc))

    async def aclose(self) -> None:
        task, self._renewal = self._renewal, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._batches.aclose()
        await self._settles.aclose()
        await self._client.aclose()

    async def ready(self) -> bool:
        """Runs a limiter script on the readiness key's slot, the way an admission does
        (NOSCRIPT, Cluster routing and all); on a single node also checks that the server is
        not a Cluster node reached by a plain URL, which would answer only its own slots."""
        names = key_names(self._prefix, READINESS_KEY)
        try:
            await self._usage_script(names, (self._time_override(),))
            return self._cluster or await self._single_node()
        except BACKEND_ERRORS as exc:
            self._check_cluster_reply(exc)
            return False

    async def _single_node(self) -> bool:
        """False (and one loud log line) when the plain URL's server is a Cluster node."""
        try:
            info = await self._client.call("INFO", "cluster")
        except ResponseError:
            # INFO denied or renamed (some managed offerings): a Cluster node still shows
            # itself by answering MOVED to an admission.
            return not self._cluster_node
        if b"cluster_enabled:1" in info:
            self._found_cluster_node("its INFO says cluster_enabled:1")
            return False
        if self._cluster_node:
            self._cluster_node = False
            _log.info("redis_url points at a plain Redis again: limits enforced")
        return True

    def _check_cluster_reply(self, exc: BaseException) -> None:
        if not self._cluster and isinstance(exc, ResponseError):
            reply = str(exc)
            if reply.startswith(_CLUSTER_REPLIES):
                self._found_cluster_node(f"it answered {reply.split(' ', 1)[0]}")

    def _found_cluster_node(self, evidence: str) -> None:
        if self._cluster_node:
            return
        self._cluster_node = True
        _log.error(
            "redis_url points at a Redis Cluster node (%s): limits cannot be enforced "
            "through one node, /readyz says not ready and admissions follow "
            "limits_backend_failure=%s; fix: redis_url: redis+cluster://host:port[,host:port]",
            evidence,
            self._failure_mode,
        )

    # --- the request path ------------------------------------------------------------------

    async def admit(self, key: KeyConfig, tokens: int, request_id: str, cost: int = 0) -> Admission:
        limits, budget = key.limits, key.budget
        if (self._skip_until and self._backing_off()) or self._cluster_node:
            return self._unavailable(key.id, tokens, request_id)
        cached = self._admit_heads.get(key.id)
        if cached is None or cached[0] is not limits or cached[1] is not budget:
            static = (
                _limit(limits.rpm),
                _limit(limits.tpm),
                _limit(limits.max_concurrent),
                _limit(limits.daily_tokens),
                _limit(limits.monthly_tokens),
                _limit(budget.daily_nanos if budget else None),
                _limit(budget.monthly_nanos if budget else None),
                self._lease_ttl_ms,
            )
            names = key_names(self._prefix, key.id)
            head = self._admit_script.head(names, static, 4)
            cached = (limits, budget, head, pack_items(names), pack_items(static))
            self._admit_heads[key.id] = cached
        lease = self._lease_prefix + str(next(self._lease_ids))
        if self._batching and not self._client.idle() and not self._batches.first(key.id):
            # The connection is busy (a burst) and this key sent an admission this loop
            # turn already: this one waits for the next turn with the key's others, and
            # they leave as one script call (gateway.limits.redis_admit).
            try:
                reply = await self._batches.join(
                    key.id, cached, self._time_override(), tokens, cost, lease
                )
            except BACKEND_ERRORS as exc:
                self._failed(exc, "admit")
                return self._unavailable(key.id, tokens, request_id)
        else:
            args = _admit_args(tokens, cost, lease, self._time_override())
            settled = 0
            waiting = self._settles.waiting
            if not waiting:
                command = cached[2] + args
            elif len(waiting) <= SETTLES_PER_CALL and self._resp and self._resp.connected():
                # The waiting settles ride in this call, run first: this process never
                # counts its own finished requests as open, and Redis runs one script, not
                # two. (Connected: the call is queued before this task can be cancelled.)
                settles = self._settles.take()
                settled = len(settles)
                command = call_with_settles(self._admit_script, cached, args, 4, settles)
            else:
                # Ahead of this admission, in the same write, for the same reason.
                self._settles.send()
                command = cached[2] + args
            resp = self._resp
            try:
                # On one Redis the call is queued here and its reply awaited (two coroutines
                # fewer than `Script.run`'s way, on every request).
                future = resp.send_nowait(command) if resp is not None else None
                if future is None:
                    reply = await self._admit_script.run(command)
                else:
                    try:
                        reply = await future
                    except ResponseError as exc:
                        if not is_noscript(exc):
                            raise
                        reply = await self._admit_script.run_again(command)
            except BACKEND_ERRORS as exc:
                self._failed(exc, "admit")
                self._count_errors(settled)
                return self._unavailable(key.id, tokens, request_id)
        if self._skip_until:
            self._recovered()
        # Times come as whole µs (redis_lua.ADMIT's reply): int / 1e6 is the double that
        # float() of the six-decimal string gives, for a third of float()'s cost.
        allowed, denied, wait, now, requests, reset_requests, used_tokens, reset_tokens = (
            reply.split(b" ")
        )
        state = _rate_state(
            limits,
            int(requests),
            int(reset_requests) / 1e6,
            int(used_tokens),
            int(reset_tokens) / 1e6,
        )
        if allowed != b"1":
            return _new(Admission, (False, state, None, _DENIED[denied], int(wait) / 1e6))
        held = self._leases.get(key.id)
        if held is None:
            self._leases[key.id] = {lease}
        else:
            held.add(lease)
        # Positional (key_id, request_id, tokens, admitted_at, cost, lease): keywords cost a
        # few tenths of a µs more, on every request.
        return _new(
            Admission,
            (
                True,
                state,
                Reservation(key.id, request_id, tokens, int(now) / 1e6, cost, lease),
                None,
                0.0,
            ),
        )

    async def settle(self, reservation: Reservation, used_tokens: int, used_cost: int = 0) -> None:
        if self._release(reservation):
            await self._settles.settle_now(reservation, used_tokens, used_cost)

    def settle_soon(self, reservation: Reservation, used_tokens: int, used_cost: int = 0) -> None:
        """`settle` without a task: queued to leave with the other settles of the next
        `SETTLE_DELAY_S` as one script call (at once on an idle connection), its reply
        handled by a callback (`gateway.limits.redis_settle`)."""
        if self._release(reservation):
            self._settles.add(reservation, used_tokens, used_cost)

    def _release(self, reservation: Reservation) -> bool:
        """Forget the reservation's lease; True when its settle is for Redis to make. The
        lease goes first: whatever happens next, this process stops renewing it, so it
        expires by itself if the ZREM never arrives. Counts a backend error (and gives
        False) during the back-off after a failure."""
        if reservation.degraded:
            return False
        held = self._leases.get(reservation.key_id)
        if held is not None:
            held.discard(reservation.lease)
            if not held:
                del self._leases[reservation.key_id]
        if self._skip_until and self._backing_off():
            self._on_backend_error()
            return False
        return True

    def _count_errors(self, count: int) -> None:
        for _ in range(count):
            self._on_backend_error()

    def _settle_failed(self, exc: BaseException, count: int = 1) -> None:
        """`count` settles failed: each is a request that met the backend unreachable."""
        self._failed(exc, "settle")
        for _ in range(count):
            self._on_backend_error()

    async def usage(self, keys: tuple[KeyConfig, ...]) -> list[KeyUsage]:
        """Raises LimiterUnavailable when Redis cannot be read (there is no usage to
        report without it), whatever `limits_backend_failure` says."""
        try:
            override = self._time_override()
            replies: list[Sequence[int]] = await asyncio.gather(
                *(self._usage_script(key_names(self._prefix, k.id), (override,)) for k in keys)
            )
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
                spend_day_nanos=int(r[5]),
                spend_month_nanos=int(r[6]),
            )
            for key, r in zip(keys, replies, strict=True)
        ]

    # --- failure handling ------------------------------------------------------------------

    def _backing_off(self) -> bool:
        return self._skip_until != 0.0 and time.monotonic() < self._skip_until

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
        self._check_cluster_reply(exc)
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
        await asyncio.gather(
            *(
                self._renew_script(
                    (key_names(self._prefix, key_id)[3],), (self._lease_ttl_ms, override, *ids)
                )
                for key_id, ids in snapshot
            )
        )


def _rate_state(
    limits: Limits, requests: int, reset_requests: float, tokens: int, reset_tokens: float
) -> RateState:
    rpm, tpm = limits.rpm, limits.tpm
    # Every field, in RateState's order (limit, remaining and reset of requests, then of
    # tokens, then the tokens used), made by `_new`, and clamped with conditionals, not
    # max(): keywords and max() calls cost about 1.5 µs more, on every request.
    if rpm is None:
        if tpm is None:
            return _NO_LIMITS
        return _new(
            RateState,
            (None, None, 0.0, tpm, tpm - tokens if tokens < tpm else 0, reset_tokens, tokens),
        )
    left = rpm - requests if requests < rpm else 0
    if tpm is None:
        return _new(RateState, (rpm, left, reset_requests, None, None, 0.0, None))
    return _new(
        RateState,
        (rpm, left, reset_requests, tpm, tpm - tokens if tokens < tpm else 0, reset_tokens, tokens),
    )


_new = tuple.__new__
"""`_new(RateState, (every field))` is `RateState(*fields)` without the Python-level
`__new__` a NamedTuple generates (0.2 against 0.45 µs, measured): for the NamedTuples every
admission makes, given all their fields in order (a missing one would go unnoticed)."""

_NO_LIMITS = RateState()
"""The state of a key with neither rpm nor tpm (immutable, so one serves every admission)."""


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
