"""The request ledger on its own: lines to rows, a bounded buffer while the database is
away, drops counted, everything written once it is back."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.keys.store import build_engine, migrate_database
from gateway.observability import ledger as ledger_module
from gateway.observability.ledger import Ledger, row_of
from gateway.observability.metrics import Metrics
from tests.observability.obs_support import value
from tests.support.postgres import ThrowawayDatabase


def line(n: int, cost: float = 0.000140, key_id: str = "team-a") -> bytes:
    return (
        b'{"timestamp":"2025-03-14T12:00:0%dZ","level":"info","event":"request",'
        b'"request_id":"r%d","route":"chat.completions","key_id":"%s","model":"gpt-4o",'
        b'"provider":"openai","status":200,"outcome":"completed","prompt_tokens":11,'
        b'"completion_tokens":12,"cost_usd":%s}\n'
        % (n % 10, n, key_id.encode(), repr(cost).encode())
    )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/ledger.db"
        return
    with ThrowawayDatabase() as db:
        yield db.url


def test_spend_is_summed_per_day_or_model_over_a_range(database_url: str) -> None:
    asyncio.run(migrate_database(database_url))
    metrics = Metrics(models=["gpt-4o"], providers=["openai"], key_ids=["team-a"])

    async def scenario() -> None:
        ledger = Ledger(build_engine(database_url), metrics)
        await ledger.start()
        ledger.add([line(1, 0.25), line(2, 0.5), line(3, 0.125, key_id="team-b")])
        while ledger.written < 3:
            await ledger.next_attempt()
        by_day = await ledger.spend(key_id="team-a")
        assert by_day == [
            {
                "key_id": "team-a",
                "day": "2025-03-14",
                "requests": 2,
                "prompt_tokens": 22,
                "completion_tokens": 24,
                "cost_usd": 0.75,
            }
        ]
        models = await ledger.spend(group_by="model")
        assert [(r["key_id"], r["model"], r["cost_usd"]) for r in models] == [
            ("team-a", "gpt-4o", 0.75),
            ("team-b", "gpt-4o", 0.125),
        ]
        # [from, to): the line at 12:00:02 is the first one left out
        since = datetime(2025, 3, 14, 12, 0, 0, tzinfo=UTC).timestamp()
        until = since + 2
        (row,) = await ledger.spend(since=since, until=until)
        assert row["requests"] == 1 and row["cost_usd"] == 0.25
        await ledger.aclose()

    try:
        asyncio.run(scenario())
    finally:
        metrics.close()


def test_a_log_line_becomes_a_row_with_its_exact_cost() -> None:
    row = row_of(line(3, cost=0.000140))
    assert row is not None
    assert row["cost_nanos"] == 140_000 and row["day"] == "2025-03-14"
    assert (row["key_id"], row["model"], row["prompt_tokens"]) == ("team-a", "gpt-4o", 11)
    assert row_of(b"not json\n") is None
    assert row_of(b'{"event":"request"}\n') is None  # no timestamp


def test_a_database_that_is_away_costs_the_lines_past_the_bound_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    asyncio.run(migrate_database(url))
    monkeypatch.setattr(ledger_module, "RETRY_S", 0.05)
    metrics = Metrics(models=["gpt-4o"], providers=["openai"], key_ids=["team-a"])

    async def scenario() -> None:
        ledger = Ledger(build_engine(url), metrics, max_lines=6)
        await ledger.start()
        lock = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            for i in range(5):
                ledger.add([line(2 * i), line(2 * i + 1)])  # add never waits
            assert ledger.pending == 6  # three batches kept, two dropped
            assert value(metrics.render()[0], "gateway_log_records_dropped_total") == 4
            # the writer meets the lock (SQLite's busy timeout, 3 s), keeps the batch
            async with asyncio.timeout(20):
                while not ledger.failing:
                    await ledger.next_attempt()
            assert ledger.written == 0 and ledger.pending == 6
        finally:
            lock.rollback()
            lock.close()
        async with asyncio.timeout(20):
            while ledger.written < 6:
                await ledger.next_attempt()
        rows = await ledger.spend(group_by="model")
        assert rows == [
            {
                "key_id": "team-a",
                "model": "gpt-4o",
                "requests": 6,
                "prompt_tokens": 66,
                "completion_tokens": 72,
                "cost_usd": 6 * 140_000 / 1e9,
            }
        ]
        await ledger.aclose()

    try:
        asyncio.run(scenario())
    finally:
        metrics.close()
