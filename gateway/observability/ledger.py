"""The request ledger: the request log's lines kept in the database, and the spend read back.

`logging: {sinks: [..., database]}` hands every batch the request log writes (the same
bounded queue that feeds stdout or the file, `gateway.observability.requestlog`) to
`Ledger.add()` as well. `add` only appends to the ledger's own buffer, bounded by
`logging.queue_size` lines, and wakes its writer task: a slow or unreachable database never
holds up the other sinks, let alone a stream. The writer parses a batch's lines in a worker
thread (off the event loop) and inserts them in one `executemany` over the key store's
database (SQLAlchemy async: asyncpg or aiosqlite; `gateway_requests`, created by the key
store's migration 2). A batch the database refuses is kept and tried again after `RETRY_S`;
lines that arrive while the buffer is full are dropped and counted in
gateway_log_records_dropped_total, as the request log's own queue does. So spend survives
a Redis flush and a restart: the limiter's counters are the enforcement, the ledger is the
record.

`spend()` answers `GET /admin/spend` (and so `gateway spend`): requests, tokens and USD per
day or per model, for one key or all, over a time range; sums are of integer nano-dollars,
so they equal the sum of the log lines' `cost_usd` exactly.

Deliberately not here: retention (delete old rows with SQL, or partition the table), and
exactly-once delivery: lines still buffered when the process is killed are lost, as the
stdout sink's would be; a graceful shutdown writes them out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from sqlalchemy import func, insert, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.observability.ledger_table import ledger_table
from gateway.observability.metrics import Metrics
from gateway.observability.spend import LedgerUnavailable

_log = logging.getLogger("gateway.ledger")

RETRY_S = 1.0
"""Seconds before a batch the database refused is tried again."""
WRITE_TIMEOUT_S = 10.0
"""A write that takes longer is abandoned (and retried): a stalled database must not hold
the writer, and the buffer's bound, forever."""

GroupBy = Literal["day", "model"]

_INT_FIELDS = ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens")


def row_of(line: bytes) -> dict[str, Any] | None:
    """The `gateway_requests` row of one request log line; None for a line that is not one."""
    try:
        fields = orjson.loads(line)
        ts = datetime.fromisoformat(fields["timestamp"].replace("Z", "+00:00"))
        row: dict[str, Any] = {
            "ts": ts.timestamp(),
            "day": ts.astimezone(UTC).strftime("%Y-%m-%d"),
            "request_id": str(fields.get("request_id", ""))[:128],
            "key_id": str(fields.get("key_id", ""))[:64],
            "model": str(fields.get("model", ""))[:200],
            "provider": str(fields.get("provider", ""))[:64],
            "route": str(fields.get("route", ""))[:32],
            "status": int(fields.get("status", 0)),
            "outcome": str(fields.get("outcome", ""))[:32],
            # the line's float dollars back to the exact integer the gateway computed
            "cost_nanos": round(float(fields.get("cost_usd") or 0) * 1e9),
        }
        for name in _INT_FIELDS:
            row[name] = int(fields.get(name) or 0)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return row


def rows_of(lines: Sequence[bytes]) -> list[dict[str, Any]]:
    return [row for row in map(row_of, lines) if row is not None]


class Ledger:
    """The `database` sink of the request log, and the reader behind /admin/spend."""

    def __init__(self, engine: AsyncEngine, metrics: Metrics, *, max_lines: int = 10_000) -> None:
        """`engine`: the database's (the key store's `build_engine`); closed by `aclose`."""
        self._engine = engine
        self._metrics = metrics
        self._max_lines = max(1, max_lines)
        self._pending: deque[list[bytes]] = deque()
        self._pending_lines = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.failing = False
        """The last write failed (the database is away); the batch waits for a retry."""
        self.written = 0
        """Rows written since start (tests and the benchmark read it)."""
        self._attempted = asyncio.Event()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._write_loop(), name="request-ledger"
            )

    def add(self, lines: list[bytes]) -> None:
        """Queue a batch of request log lines; never waits. Past the bound, the lines are
        dropped and counted."""
        if self._closing or self._pending_lines + len(lines) > self._max_lines:
            self._metrics.log_record_dropped(len(lines))
            return
        self._pending.append(lines)
        self._pending_lines += len(lines)
        self._wake.set()

    @property
    def pending(self) -> int:
        return self._pending_lines

    async def next_attempt(self) -> None:
        """Return after the writer's next write, whether the database took it or not."""
        self._attempted.clear()
        await self._attempted.wait()

    async def aclose(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Write what is buffered (for up to `timeout` seconds), then close the engine."""
        self._closing = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._pending_lines:
            self._metrics.log_record_dropped(self._pending_lines)
            _log.warning("request ledger: %d lines not written at exit", self._pending_lines)
            self._pending.clear()
            self._pending_lines = 0
        await self._engine.dispose()

    async def _write_loop(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            lines = self._pending[0]
            rows = await asyncio.to_thread(rows_of, lines)
            try:
                await asyncio.wait_for(self._insert(rows), WRITE_TIMEOUT_S)
            except (SQLAlchemyError, OSError, TimeoutError) as exc:
                self._attempted.set()
                if not self.failing:
                    self.failing = True
                    _log.warning(
                        "request ledger: the database refused a batch (%s); retrying every "
                        "%.0f s, lines past %d are dropped",
                        type(exc).__name__,
                        RETRY_S,
                        self._max_lines,
                    )
                if self._closing:
                    return
                await asyncio.sleep(RETRY_S)
                continue
            if self.failing:
                self.failing = False
                _log.info("request ledger: the database takes writes again")
            self._pending.popleft()
            self._pending_lines -= len(lines)
            self.written += len(rows)
            self._attempted.set()

    async def _insert(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        async with self._engine.begin() as conn:
            await conn.execute(insert(ledger_table), rows)

    async def spend(
        self,
        *,
        key_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        group_by: GroupBy = "day",
    ) -> list[dict[str, Any]]:
        """Requests, tokens and USD per `group_by` (day or model), per key, over
        [since, until) in unix time. Raises LedgerUnavailable when the database cannot be
        read."""
        t = ledger_table
        group = t.c.day if group_by == "day" else t.c.model
        query = select(
            t.c.key_id,
            group,
            func.count().label("requests"),
            func.sum(t.c.prompt_tokens).label("prompt_tokens"),
            func.sum(t.c.completion_tokens).label("completion_tokens"),
            func.sum(t.c.cost_nanos).label("cost_nanos"),
        ).group_by(t.c.key_id, group)
        if key_id is not None:
            query = query.where(t.c.key_id == key_id)
        if since is not None:
            query = query.where(t.c.ts >= since)
        if until is not None:
            query = query.where(t.c.ts < until)
        query = query.order_by(t.c.key_id, group)
        try:
            async with asyncio.timeout(WRITE_TIMEOUT_S), self._engine.connect() as conn:
                result = (await conn.execute(query)).all()
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            raise LedgerUnavailable(type(exc).__name__) from None
        return [
            {
                "key_id": row.key_id,
                group_by: row[1],
                "requests": int(row.requests),
                "prompt_tokens": int(row.prompt_tokens or 0),
                "completion_tokens": int(row.completion_tokens or 0),
                "cost_usd": int(row.cost_nanos or 0) / 1e9,
            }
            for row in result
        ]
