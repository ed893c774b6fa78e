"""A throwaway PostgreSQL database for tests, on the server at 127.0.0.1:5432.

`ThrowawayDatabase` creates a database with a random name (as user `postgres`, password
`postgres`, as `.ci/system-deps` sets it up, or as `$TEST_POSTGRES_URL` says) and drops it, with whatever connections are left, at the end.
An unreachable server fails the run with a clear message instead of skipping: a skipped
suite proves nothing about the Postgres code path.

Deliberately not here: starting a PostgreSQL server (CI runs one, as this machine does).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from types import TracebackType

import asyncpg
import pytest

ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql://postgres:postgres@127.0.0.1:5432/postgres"
)


async def _run(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


class ThrowawayDatabase:
    def __init__(self) -> None:
        self.name = "gateway_test_" + secrets.token_hex(6)
        base = ADMIN_URL.rsplit("/", 1)[0]
        self.url = f"{base}/{self.name}"

    def create(self) -> None:
        try:
            asyncio.run(_run(f'CREATE DATABASE "{self.name}"'))
        except (OSError, asyncpg.PostgresError) as exc:
            pytest.fail(
                f"cannot create a test database on {ADMIN_URL.rsplit('@', 1)[-1]}: {exc}. The key "
                "store tests need PostgreSQL there (or set TEST_POSTGRES_URL).",
                pytrace=False,
            )

    def drop(self) -> None:
        asyncio.run(_run(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))

    def __enter__(self) -> ThrowawayDatabase:
        self.create()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.drop()
