"""The key store on its own: migrations, the in-memory table, following another store's
writes, on SQLite and on a throwaway PostgreSQL database alike."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import insert

from gateway.config import Limits, hash_key
from gateway.keys import schema
from gateway.keys.model import KeyConflict, KeyNotFound, ManagedKey
from gateway.keys.store import KeyStore, build_engine, migrate_database
from tests.support.postgres import ThrowawayDatabase


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/keys.db"
        return
    with ThrowawayDatabase() as db:
        yield db.url


async def started(url: str, **kw: float) -> KeyStore:
    store = KeyStore(url, **kw)
    await store.start()
    return store


def test_migrations_run_once_even_when_two_replicas_start_together(database_url: str) -> None:
    async def main() -> list[list[int]]:
        return list(await asyncio.gather(*(migrate_database(database_url) for _ in range(2))))

    if database_url.startswith("sqlite"):
        first = asyncio.run(migrate_database(database_url))
        second = asyncio.run(migrate_database(database_url))
        assert (first, second) == ([1, 2], [])
    else:
        assert sorted(asyncio.run(main())) == [[], [1, 2]]
    assert asyncio.run(migrate_database(database_url)) == []


def test_a_database_from_a_newer_gateway_is_refused(database_url: str) -> None:
    async def main() -> None:
        await migrate_database(database_url)
        engine = build_engine(database_url)
        async with engine.begin() as conn:
            await conn.execute(insert(schema.schema_version).values(version=99, applied_at=0))
        await engine.dispose()
        with pytest.raises(schema.SchemaMismatch, match="upgrade the gateway"):
            await migrate_database(database_url)
        with pytest.raises(schema.SchemaMismatch, match="version 99"):
            await started(database_url)

    asyncio.run(main())


def test_lookup_serves_live_secrets_only(database_url: str) -> None:
    async def main() -> None:
        await migrate_database(database_url)
        store = await started(database_url)
        try:
            _, secret = await store.create("k", limits=Limits(rpm=3))
            digest = hash_key(secret)
            key = store.lookup(digest)
            assert key is not None and key.id == "k" and key.limits.rpm == 3
            assert store.lookup(hash_key("sk-gw-unknown")) is None
            # Blocking and unblocking keep the KeyConfig (and its Limits) the limiters cache by.
            await store.update("k", blocked=True)
            assert store.lookup(digest) is None
            await store.update("k", blocked=False, metadata={"team": "x"})
            assert store.lookup(digest) is key
            await store.update("k", limits=Limits(rpm=4))
            changed = store.lookup(digest)
            assert changed is not None and changed is not key and changed.limits.rpm == 4
            await store.update("k", expires_at=time.time() - 1)
            assert store.lookup(digest) is None
            await store.update("k", expires_at=None)
            _, new = await store.rotate("k", grace_seconds=60)
            assert store.lookup(digest) is not None and store.lookup(hash_key(new)) is not None
            _, newest = await store.rotate("k", grace_seconds=0)
            assert store.lookup(digest) is None and store.lookup(hash_key(new)) is None
            await store.revoke("k")
            assert store.lookup(hash_key(newest)) is None
            with pytest.raises(KeyNotFound):
                await store.update("k", blocked=False)
            with pytest.raises(KeyConflict):
                await store.create("k")
        finally:
            await store.aclose()

    asyncio.run(main())


def test_a_store_follows_another_stores_writes(database_url: str) -> None:
    async def main() -> None:
        await migrate_database(database_url)
        writer = await started(database_url)
        reader = await started(database_url, poll_interval=0.05)
        try:
            _, secret = await writer.create("followed")
            for _ in range(200):
                if reader.lookup(hash_key(secret)) is not None:
                    break
                await asyncio.sleep(0.01)
            assert reader.lookup(hash_key(secret)) is not None
        finally:
            await reader.aclose()
            await writer.aclose()

    asyncio.run(main())


def test_a_rotation_that_lost_a_race_conflicts_and_changes_nothing(database_url: str) -> None:
    async def main() -> None:
        await migrate_database(database_url)
        store = await started(database_url)
        try:
            await store.create("raced")
            stale = await store._live_row("raced")
            _, winner = await store.rotate("raced", 60)

            async def read_before_the_winner(key_id: str) -> ManagedKey:
                return stale

            # The loser read the row before the winner wrote it.
            store._live_row = read_before_the_winner  # type: ignore[method-assign]
            with pytest.raises(KeyConflict):
                await store.rotate("raced", 60)
            assert store.lookup(hash_key(winner)) is not None
        finally:
            await store.aclose()

    asyncio.run(main())


@pytest.mark.postgres
def test_a_listener_cancelled_while_it_subscribes_leaves_no_connection_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`aclose` cancels the follow task; when that lands between connecting the listener
    and subscribing it, the connection is closed there and then, not left to the collector
    (an unclosed asyncpg connection warns when collected, in whatever runs at that moment)."""
    entered = asyncio.Event()

    async def stuck(*args: object) -> None:
        entered.set()
        await asyncio.Event().wait()

    async def main(url: str) -> None:
        await migrate_database(url)
        store = await started(url)
        try:
            await store._unlisten()
            monkeypatch.setattr(asyncpg.Connection, "add_listener", stuck)
            task = asyncio.create_task(store._listen())
            await entered.wait()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert store._listener is None
        finally:
            await store.aclose()

    with ThrowawayDatabase() as db:
        asyncio.run(main(db.url))
        gc.collect()  # an unclosed connection would warn here (warnings are errors)


@pytest.mark.postgres
def test_closing_while_following_a_write_leaves_no_connection_open() -> None:
    """Two stores follow each other's write and close at once, a hundred times over. A store
    closed while its follow task reads (woken by the write's NOTIFY) used to cancel that read,
    and a connection being opened or returned to the pool at that moment was left open
    (asyncpg 0.29, SQLAlchemy 2.0: about one run in twenty); now it is asked to stop between
    reads."""

    async def once(url: str, i: int) -> None:
        writer = await started(url)
        reader = await started(url)
        try:
            _, secret = await writer.create(f"k{i}")
            for _ in range(400):
                if reader.lookup(hash_key(secret)) is not None:
                    break
                await asyncio.sleep(0.002 * (1 + i % 3))  # closing at varied moments
            assert reader.lookup(hash_key(secret)) is not None
        finally:
            await reader.aclose()
            await writer.aclose()
            assert writer._task is not None and not writer._task.cancelled()

    with ThrowawayDatabase() as db:
        asyncio.run(migrate_database(db.url))
        for i in range(100):
            asyncio.run(once(db.url, i))
    gc.collect()  # an unclosed connection would warn here (warnings are errors)
