"""A key database for the benchmark: `n` keys managed at runtime, the bench key among them.

The gateway variant that uses it finds the bench key in the store's in-memory table rather
than the config's, with `n - 1` other keys beside it, so the benchmark measures the request
path of a gateway whose keys are managed at runtime (and its follow loop running).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

from sqlalchemy import insert

from gateway.config import hash_key
from gateway.keys import schema
from gateway.keys.store import build_engine, migrate_database


async def _seed(url: str, n: int, bench_secret: str, limits: dict[str, Any]) -> None:
    await migrate_database(url)
    engine = build_engine(url)
    now = time.time()
    rows = []
    for i in range(n):
        digest = hash_key(bench_secret) if i == 0 else hash_key(secrets.token_urlsafe(32))
        rows.append(
            {
                "id": "bench" if i == 0 else f"team-{i:05d}",
                "key_sha256": digest,
                "models": None,
                "limits": limits if i == 0 else {"rpm": 600, "tpm": 100_000},
                "budget": None,
                "meta": {},
                "expires_at": None,
                "blocked": False,
                "revoked_at": None,
                "created_at": now,
                "updated_at": now,
                "revision": i + 1,
            }
        )
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(schema.keys), rows)
            await conn.execute(schema.generation.update().values(value=n))
    finally:
        await engine.dispose()


def seed_keys(url: str, n: int, bench_secret: str, limits: dict[str, Any]) -> None:
    asyncio.run(_seed(url, n, bench_secret, limits))
