"""The database's tables (managed keys, the request ledger) and the migrations that build
them, versioned in the database.

Each migration is a numbered step, run once, in order, in one transaction with its row in
`gateway_schema_version`; on PostgreSQL an advisory lock keeps two replicas that start
together from running the same step twice. `gateway serve` runs what is missing before it
listens, `gateway migrate` does only that (for a deploy that migrates as a separate step).

Deliberately not here: alembic (nine lines of DDL history do not need a second tool and its
config), downgrades (a newer gateway's schema is refused by an older one, see
`check_version`), and any SQL the store runs at request time.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.observability.ledger_table import ledger_table

metadata = MetaData()

keys = Table(
    "gateway_keys",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("key_sha256", String(64), nullable=False, unique=True),
    # A rotated key's old secret, valid until `previous_valid_until` (the grace period).
    Column("previous_sha256", String(64), nullable=True, unique=True),
    Column("previous_valid_until", Float, nullable=True),
    Column("models", JSON, nullable=True),
    Column("limits", JSON, nullable=False),
    Column("budget", JSON, nullable=True),
    Column("meta", JSON, nullable=True),
    Column("expires_at", Float, nullable=True),
    Column("blocked", Boolean, nullable=False),
    Column("revoked_at", Float, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # The value of `gateway_keys_generation` the last write to this row took: replicas read
    # the rows past the last revision they saw.
    Column("revision", BigInteger, nullable=False, index=True),
)

generation = Table(
    "gateway_keys_generation",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("value", BigInteger, nullable=False),
)

schema_version = Table(
    "gateway_schema_version",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_at", Float, nullable=False),
)


async def _v1_keys(conn: AsyncConnection) -> None:
    await conn.run_sync(lambda sync: keys.create(sync))
    await conn.run_sync(lambda sync: generation.create(sync))
    await conn.execute(insert(generation).values(id=1, value=0))


async def _v2_requests(conn: AsyncConnection) -> None:
    await conn.run_sync(lambda sync: ledger_table.create(sync))


MIGRATIONS: tuple[tuple[int, Callable[[AsyncConnection], Awaitable[None]]], ...] = (
    (1, _v1_keys),
    (2, _v2_requests),
)
LATEST = MIGRATIONS[-1][0]


class SchemaMismatch(Exception):
    """The database's key schema is not the one this gateway was built for."""


async def migrate(conn: AsyncConnection) -> list[int]:
    """Run the missing migrations inside the caller's transaction; the versions applied."""
    if conn.dialect.name == "postgresql":
        # Held to the end of the transaction: a second replica waits, then finds it done.
        await conn.execute(text("SELECT pg_advisory_xact_lock(2015188351)"))
    await conn.run_sync(lambda sync: schema_version.create(sync, checkfirst=True))
    current = await _current(conn)
    if current > LATEST:
        raise SchemaMismatch(
            f"the database's key schema is version {current}, this gateway knows {LATEST}: "
            "upgrade the gateway"
        )
    applied = []
    for version, step in MIGRATIONS:
        if version > current:
            await step(conn)
            await conn.execute(
                insert(schema_version).values(version=version, applied_at=time.time())
            )
            applied.append(version)
    return applied


async def check_version(conn: AsyncConnection) -> None:
    """Refuse a database that `migrate` has not brought to this gateway's version."""
    current = await _current(conn)
    if current != LATEST:
        raise SchemaMismatch(
            f"the database's key schema is version {current}, this gateway needs {LATEST}: "
            "run `gateway migrate`"
        )


async def _current(conn: AsyncConnection) -> int:
    has_table = await conn.run_sync(lambda sync: sync.dialect.has_table(sync, schema_version.name))
    if not has_table:
        return 0
    value = (await conn.execute(select(func.max(schema_version.c.version)))).scalar()
    return int(value or 0)
