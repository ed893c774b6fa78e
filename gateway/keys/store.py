"""Keys managed at runtime: kept in a database, served from memory.

`KeyStore` holds every key of the database in one dict from sha256 to `KeyConfig`, so the
request path (`lookup`) is a dict lookup and never waits on the database. Writes (the admin
API) go to the database in one transaction that also bumps `gateway_keys_generation`; each
written row takes that value as its `revision`, so a replica catches up by reading the rows
past the last revision it saw. What tells the replicas to read:

- PostgreSQL: `pg_notify('gateway_keys', revision)` in the write's transaction, delivered at
  commit to every replica's LISTEN connection; a read every `resync_interval` seconds is the
  safety net for a notification lost while that connection was down.
- SQLite (one node, perhaps several workers): a read every `poll_interval` seconds; it is
  one indexed query that returns nothing when nothing changed.

The database unreachable: the replica keeps serving the keys it has, says so (`reachable`,
the metric behind `on_reachable`) and writes fail with `StoreUnavailable` (the API's 503).

One code path for both databases: SQLAlchemy Core over asyncpg or aiosqlite. Deliberately
not here: the HTTP API (`gateway.keys.admin`), the config file's keys (read-only, looked up
by `edge/keys.py: Keys` first), and enforcing spending budgets (the limiters do, from each
key's `KeyConfig.budget`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields
from typing import Any
from urllib.parse import urlsplit

import structlog
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from gateway.config import Budget, KeyConfig, Limits, hash_key
from gateway.keys import schema
from gateway.keys.model import (
    UNSET,
    KeyConflict,
    KeyNotFound,
    ManagedKey,
    StoreUnavailable,
    limits_json,
    new_secret,
)

log = structlog.get_logger("gateway.keys")

CHANNEL = "gateway_keys"
CONNECT_TIMEOUT = 3.0
"""Seconds to reach the database: an admin write or a sync fails after this, it never hangs."""


def engine_url(url: str) -> str:
    """The SQLAlchemy URL of a `database_url`: the async driver named, nothing else changed."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    if url.startswith("postgresql://"):
        return "postgresql+asyncpg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url.removeprefix("sqlite:///")
    raise ValueError("database_url: use postgresql://... or sqlite:///path")


def describe_url(url: str) -> str:
    """The database's address for a log line: scheme, host and name, no credentials."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        return f"sqlite {parts.path}"
    return f"postgresql {parts.hostname}:{parts.port or 5432}{parts.path}"


def build_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        return create_async_engine(engine_url(url), connect_args={"timeout": CONNECT_TIMEOUT})
    return create_async_engine(
        engine_url(url),
        pool_pre_ping=True,
        pool_size=2,
        max_overflow=4,
        connect_args={"timeout": CONNECT_TIMEOUT, "command_timeout": 2 * CONNECT_TIMEOUT},
    )


async def migrate_database(url: str) -> list[int]:
    """Bring the database's schema to this gateway's version (`gateway migrate`, start-up)."""
    engine = build_engine(url)
    try:
        async with engine.begin() as conn:
            return await schema.migrate(conn)
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        raise StoreUnavailable(_reason(exc)) from None
    finally:
        await engine.dispose()


def _reason(exc: BaseException) -> str:
    """One line about a database failure, without the URL (it may hold a password)."""
    orig = getattr(exc, "orig", None) or exc.__cause__ or exc
    text = str(orig).splitlines()[0] if str(orig) else ""
    return f"{type(orig).__name__}: {text}"[:300] if text else type(orig).__name__


def _row_key(row: Any) -> ManagedKey:
    m = row._mapping
    limits = m["limits"] or {}
    return ManagedKey(
        id=m["id"],
        key_sha256=m["key_sha256"],
        models=tuple(m["models"]) if m["models"] is not None else None,
        limits=Limits(**{f.name: limits.get(f.name) for f in fields(Limits)}),
        budget=m["budget"],
        metadata=m["meta"] or {},
        expires_at=m["expires_at"],
        blocked=bool(m["blocked"]),
        revoked_at=m["revoked_at"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        revision=int(m["revision"]),
        previous_sha256=m["previous_sha256"],
        previous_valid_until=m["previous_valid_until"],
    )


class KeyStore:
    """The database's keys, mirrored in memory and kept in step with every replica's writes."""

    def __init__(
        self,
        url: str,
        *,
        on_key: Callable[[str], None] = lambda key_id: None,
        on_reachable: Callable[[bool], None] = lambda up: None,
        poll_interval: float = 0.25,
        resync_interval: float = 5.0,
    ) -> None:
        self.url = url
        self.postgres = not url.startswith("sqlite")
        self._engine = build_engine(url)
        self._on_key = on_key
        self._on_reachable = on_reachable
        # With LISTEN/NOTIFY the periodic read is only the safety net.
        self._interval = resync_interval if self.postgres else poll_interval
        self._rows: dict[str, ManagedKey] = {}
        self._configs: dict[str, KeyConfig] = {}
        self._by_hash: dict[str, tuple[KeyConfig, float]] = {}
        """sha256 -> (key, valid until): the request path's whole view of the database."""
        self._seen = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._listener: Any = None
        self.reachable = True
        self.unreachable_since: float | None = None
        self.synced_at = 0.0

    # --- the request path ------------------------------------------------------------------

    def lookup(self, digest: str) -> KeyConfig | None:
        """The live key whose secret hashes to `digest`; None for unknown, expired, blocked,
        revoked and past-grace secrets alike (the caller answers them all the same 401)."""
        entry = self._by_hash.get(digest)
        if entry is None:
            return None
        key, valid_until = entry
        if valid_until != math.inf and valid_until <= time.time():
            return None
        return key

    def keys(self) -> tuple[KeyConfig, ...]:
        """The keys that may be used now (for usage reports)."""
        now = time.time()
        return tuple(self._configs[r.id] for r in self._rows.values() if r.status(now) == "active")

    def rows(self) -> list[ManagedKey]:
        return sorted(self._rows.values(), key=lambda r: r.id)

    def row(self, key_id: str) -> ManagedKey | None:
        return self._rows.get(key_id)

    # --- life --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Read every key; fails (StoreUnavailable) when the database cannot be read."""
        try:
            async with self._engine.connect() as conn:
                await schema.check_version(conn)
            await self.sync()
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            await self._engine.dispose()
            raise StoreUnavailable(_reason(exc)) from None
        except BaseException:  # SchemaMismatch, cancellation: close what was opened
            await self._engine.dispose()
            raise
        if self.postgres:
            await self._listen()
        self._task = asyncio.create_task(self._follow(), name="gateway-keys-follow")

    async def aclose(self) -> None:
        if self._task is not None:
            # Asked to stop between two reads, not cancelled in the middle of one: a
            # connection being opened or returned to the pool when the cancellation lands
            # can be left open (asyncpg 0.29 with SQLAlchemy 2.0), warning when collected.
            # Cancelled only if the read in progress outlasts its own timeouts.
            self._closing = True
            self._wake.set()
            done, _ = await asyncio.wait({self._task}, timeout=3 * CONNECT_TIMEOUT)
            if not done:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        await self._unlisten()
        await self._engine.dispose()

    async def _follow(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            self._wake.clear()
            if self._closing:
                return
            try:
                await self.sync()
                if self.postgres and self._listener is None:
                    await self._listen()
                    await self.sync()  # what was written while nobody listened
            except (SQLAlchemyError, OSError, TimeoutError) as exc:
                self._set_reachable(False, exc)
            except Exception:
                # Anything else is a bug; logged, and the loop goes on: were it to end, this
                # replica would serve a frozen copy of the keys without saying so.
                log.exception("key store sync failed")

    async def _listen(self) -> None:
        import asyncpg

        dsn = "postgresql://" + engine_url(self.url).removeprefix("postgresql+asyncpg://")
        errors = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
        try:
            conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
        except errors as exc:
            self._set_reachable(False, exc)
            return
        try:
            await conn.add_listener(CHANNEL, self._notified)
        except BaseException as exc:
            # Failed or cancelled (`aclose` while following) half way: the connection is
            # this call's alone, so it closes it rather than leave it to the collector.
            conn.terminate()
            if isinstance(exc, errors):
                self._set_reachable(False, exc)
                return
            raise
        conn.add_termination_listener(self._listener_lost)
        self._listener = conn

    async def _unlisten(self) -> None:
        conn, self._listener = self._listener, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), CONNECT_TIMEOUT)

    def _notified(self, *args: object) -> None:
        self._wake.set()

    def _listener_lost(self, conn: object) -> None:
        if conn is self._listener:
            self._listener = None
            self._wake.set()

    def _set_reachable(self, up: bool, exc: BaseException | None = None) -> None:
        if up == self.reachable:
            return
        self.reachable = up
        self.unreachable_since = None if up else time.time()
        self._on_reachable(up)
        if up:
            log.info("key database reachable again", keys=len(self._rows))
        else:
            log.warning(
                "key database unreachable: serving the keys known so far",
                database=describe_url(self.url),
                reason=_reason(exc) if exc is not None else "",
                keys=len(self._rows),
            )

    # --- catching up -------------------------------------------------------------------------

    async def sync(self) -> None:
        """Apply every row written since the last revision this replica saw."""
        async with self._engine.connect() as conn:
            result = await conn.execute(
                select(schema.keys)
                .where(schema.keys.c.revision > self._seen)
                .order_by(schema.keys.c.revision)
            )
            changed = [_row_key(row) for row in result]
        self.synced_at = time.time()
        self._set_reachable(True)
        if changed:
            self._apply(changed)

    def _apply(self, changed: Iterable[ManagedKey]) -> None:
        for row in changed:
            self._rows[row.id] = row
            self._seen = max(self._seen, row.revision)
            old = self._configs.get(row.id)
            # The same KeyConfig while models, limits and budget stay: the limiters key their
            # per-key caches by the Limits and Budget objects.
            budget = Budget.of(row.budget)
            if (
                old is None
                or old.models != row.models
                or old.limits != row.limits
                or old.budget != budget
            ):
                self._configs[row.id] = KeyConfig(
                    id=row.id,
                    key_sha256=row.key_sha256,
                    models=row.models,
                    limits=row.limits,
                    budget=budget,
                )
                self._on_key(row.id)
        by_hash: dict[str, tuple[KeyConfig, float]] = {}
        for row in self._rows.values():
            if row.revoked_at is not None or row.blocked:
                continue
            key = self._configs[row.id]
            until = row.expires_at if row.expires_at is not None else math.inf
            by_hash[row.key_sha256] = (key, until)
            if row.previous_sha256 is not None and row.previous_valid_until is not None:
                by_hash[row.previous_sha256] = (key, min(until, row.previous_valid_until))
        self._by_hash = by_hash  # one assignment: a lookup sees the old table or the new

    # --- writes (the admin API) --------------------------------------------------------------

    async def create(
        self,
        key_id: str,
        *,
        models: tuple[str, ...] | None = None,
        limits: Limits | None = None,
        budget: Mapping[str, float] | None = None,
        expires_at: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> tuple[ManagedKey, str]:
        """A new key and its secret (returned this once, stored only as its sha256)."""
        secret = new_secret()
        now = time.time()

        async def write(conn: AsyncConnection, revision: int) -> None:
            await conn.execute(
                insert(schema.keys).values(
                    id=key_id,
                    key_sha256=hash_key(secret),
                    models=list(models) if models is not None else None,
                    limits=limits_json(limits or Limits()),
                    budget=dict(budget) if budget is not None else None,
                    meta=dict(metadata or {}),
                    expires_at=expires_at,
                    blocked=False,
                    revoked_at=None,
                    created_at=now,
                    updated_at=now,
                    revision=revision,
                )
            )

        await self._write(write, key_id, creating=True)
        return self._rows[key_id], secret

    async def update(self, key_id: str, **changes: Any) -> ManagedKey:
        """Change models, limits, budget, expires_at, metadata or blocked of a live key."""
        values: dict[str, Any] = {}
        for name, value in changes.items():
            if value is UNSET:
                continue
            if name == "limits":
                value = limits_json(value)
            elif name == "models" and value is not None:
                value = list(value)
            values["meta" if name == "metadata" else name] = value
        await self._write(self._updater(key_id, values), key_id)
        return self._rows[key_id]

    async def rotate(self, key_id: str, grace_seconds: float) -> tuple[ManagedKey, str]:
        """A new secret; the current one keeps working for `grace_seconds` (0: not at all).
        A secret still in an earlier rotation's grace stops now."""
        secret = new_secret()
        row = await self._live_row(key_id)
        values = {
            "key_sha256": hash_key(secret),
            "previous_sha256": row.key_sha256 if grace_seconds > 0 else None,
            "previous_valid_until": time.time() + grace_seconds if grace_seconds > 0 else None,
        }
        try:
            await self._write(self._updater(key_id, values, expect_hash=row.key_sha256), key_id)
        except KeyNotFound:
            await self._live_row(key_id)  # KeyNotFound again when it was revoked meanwhile
            raise KeyConflict(key_id) from None  # another rotation won the race
        return self._rows[key_id], secret

    async def revoke(self, key_id: str) -> ManagedKey:
        values = {"revoked_at": time.time(), "previous_sha256": None}
        await self._write(self._updater(key_id, values), key_id)
        return self._rows[key_id]

    async def _live_row(self, key_id: str) -> ManagedKey:
        try:
            async with self._engine.connect() as conn:
                result = await conn.execute(select(schema.keys).where(schema.keys.c.id == key_id))
                row = result.first()
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            self._set_reachable(False, exc)
            raise StoreUnavailable(_reason(exc)) from None
        if row is None or row._mapping["revoked_at"] is not None:
            raise KeyNotFound(key_id)
        return _row_key(row)

    def _updater(
        self, key_id: str, values: dict[str, Any], expect_hash: str | None = None
    ) -> Callable[[AsyncConnection, int], Any]:
        async def write(conn: AsyncConnection, revision: int) -> None:
            t = schema.keys
            where = (t.c.id == key_id) & t.c.revoked_at.is_(None)
            if expect_hash is not None:  # two rotations at once: the second one fails
                where = where & (t.c.key_sha256 == expect_hash)
            result = await conn.execute(
                update(t).where(where).values(**values, updated_at=time.time(), revision=revision)
            )
            if result.rowcount != 1:
                raise KeyNotFound(key_id)

        return write

    async def _write(
        self,
        write: Callable[[AsyncConnection, int], Any],
        key_id: str,
        creating: bool = False,
    ) -> None:
        try:
            async with self._engine.begin() as conn:
                gen = schema.generation
                # The row lock this takes orders concurrent writers: revisions commit in order.
                await conn.execute(update(gen).where(gen.c.id == 1).values(value=gen.c.value + 1))
                revision = int(
                    (await conn.execute(select(gen.c.value).where(gen.c.id == 1))).scalar_one()
                )
                await write(conn, revision)
                if self.postgres:
                    await conn.exec_driver_sql(f"NOTIFY {CHANNEL}, '{revision}'")
            await self.sync()
        except IntegrityError:
            if creating:
                raise KeyConflict(key_id) from None
            raise
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            self._set_reachable(False, exc)
            raise StoreUnavailable(_reason(exc)) from None
