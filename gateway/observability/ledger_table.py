"""The request ledger's table, `gateway_requests`: one row per request log line.

Its own module so that the migrations (`gateway.keys.schema`, which creates it as migration
2) and the ledger (`gateway.observability.ledger`) share it without the ledger importing the
key store's package. Loads SQLAlchemy: imported only with a database.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Index, Integer, MetaData, String, Table

metadata = MetaData()

ledger_table = Table(
    "gateway_requests",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("ts", Float, nullable=False),  # unix time the request ended
    Column("day", String(10), nullable=False),  # its UTC date, for group_by=day
    Column("request_id", String(128), nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("model", String(200), nullable=False),
    Column("provider", String(64), nullable=False),
    Column("route", String(32), nullable=False),
    Column("status", Integer, nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    Column("cached_tokens", BigInteger, nullable=False),
    Column("reasoning_tokens", BigInteger, nullable=False),
    Column("cost_nanos", BigInteger, nullable=False),
    Index("gateway_requests_key_ts", "key_id", "ts"),
    Index("gateway_requests_ts", "ts"),
)
