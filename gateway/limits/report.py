"""Per-key usage as data and as a table: the admin route's JSON and `gateway usage`'s output.

`key_usage()` builds a `KeyUsage` from raw counts (both backends use it, so they report
alike); `usage_rows()` turns usages into JSON-able dicts; `format_usage_table()` into a
fixed-width table for a terminal.

Deliberately not here: reading the counts (that is the limiter's `usage()`), and HTTP or
CLI plumbing (the edge and the CLI call these functions).
"""

from __future__ import annotations

from typing import Any

from gateway.config import NANOS_PER_USD, KeyConfig
from gateway.limits.base import KeyUsage

LIMIT_NAMES: tuple[str, ...] = ("rpm", "tpm", "max_concurrent", "daily_tokens", "monthly_tokens")
BUDGET_NAMES: tuple[str, ...] = ("daily_usd", "monthly_usd")


def key_usage(
    key: KeyConfig,
    *,
    requests_minute: int,
    tokens_minute: int,
    tokens_day: int,
    tokens_month: int,
    concurrent: int,
    spend_day_nanos: int = 0,
    spend_month_nanos: int = 0,
) -> KeyUsage:
    """A `KeyUsage` with every limit (None: not configured) and what remains of it."""
    limits = key.limits
    used = {
        "rpm": requests_minute,
        "tpm": tokens_minute,
        "max_concurrent": concurrent,
        "daily_tokens": tokens_day,
        "monthly_tokens": tokens_month,
    }
    configured: dict[str, int | None] = {
        "rpm": limits.rpm,
        "tpm": limits.tpm,
        "max_concurrent": limits.max_concurrent,
        "daily_tokens": limits.daily_tokens,
        "monthly_tokens": limits.monthly_tokens,
    }
    return KeyUsage(
        key_id=key.id,
        requests_minute=requests_minute,
        tokens_minute=tokens_minute,
        tokens_day=tokens_day,
        tokens_month=tokens_month,
        concurrent=concurrent,
        spend_day_nanos=spend_day_nanos,
        spend_month_nanos=spend_month_nanos,
        limits=configured,
        budget={}
        if key.budget is None
        else {"daily_usd": key.budget.daily_usd, "monthly_usd": key.budget.monthly_usd},
        remaining={
            name: None if limit is None else max(limit - used[name], 0)
            for name, limit in configured.items()
        },
    )


def usage_rows(usages: list[KeyUsage]) -> list[dict[str, Any]]:
    """One JSON-able dict per key, in the order given."""
    return [
        {
            "key_id": u.key_id,
            "requests_minute": u.requests_minute,
            "tokens_minute": u.tokens_minute,
            "tokens_day": u.tokens_day,
            "tokens_month": u.tokens_month,
            "concurrent": u.concurrent,
            "limits": {name: u.limits.get(name) for name in LIMIT_NAMES},
            "remaining": {name: u.remaining.get(name) for name in LIMIT_NAMES},
            "spend_day_usd": u.spend_day_nanos / NANOS_PER_USD,
            "spend_month_usd": u.spend_month_nanos / NANOS_PER_USD,
            "budget": u.budget or None,
        }
        for u in usages
    ]


def usage_of_row(row: dict[str, Any]) -> KeyUsage:
    """The `KeyUsage` of one of `usage_rows()`'s rows (`gateway usage` reads the admin
    route's)."""
    return KeyUsage(
        key_id=row["key_id"],
        requests_minute=row["requests_minute"],
        tokens_minute=row["tokens_minute"],
        tokens_day=row["tokens_day"],
        tokens_month=row["tokens_month"],
        concurrent=row["concurrent"],
        spend_day_nanos=round(row.get("spend_day_usd", 0) * NANOS_PER_USD),
        spend_month_nanos=round(row.get("spend_month_usd", 0) * NANOS_PER_USD),
        limits=row["limits"],
        remaining=row["remaining"],
        budget=row.get("budget") or {},
    )


_COLUMNS: tuple[tuple[str, str, str], ...] = (
    # header, KeyUsage attribute with the count, limit name
    ("REQ/MIN", "requests_minute", "rpm"),
    ("TOKENS/MIN", "tokens_minute", "tpm"),
    ("TOKENS/DAY", "tokens_day", "daily_tokens"),
    ("TOKENS/MONTH", "tokens_month", "monthly_tokens"),
    ("CONCURRENT", "concurrent", "max_concurrent"),
)


def _cell(used: int, limit: int | None, remaining: int | None) -> str:
    if limit is None:
        return f"{used:,}"
    left = max(limit - used, 0) if remaining is None else remaining
    return f"{used:,}/{limit:,} ({left:,} left)"


def _usd_cell(nanos: int, budget: float | None) -> str:
    spent = f"${nanos / NANOS_PER_USD:,.4f}"
    if budget is None:
        return spent
    return f"{spent}/${budget:,.2f}" if budget >= 1 else f"{spent}/${budget:g}"


def format_usage_table(usages: list[KeyUsage]) -> str:
    """A fixed-width table: one line per key, each count as `used/limit (N left)` when
    the key has that limit, else the bare count; spend as `$spent/$budget`."""
    header = ["KEY", *(title for title, _, _ in _COLUMNS), "USD/DAY", "USD/MONTH"]
    rows = [header]
    for u in usages:
        rows.append(
            [
                u.key_id,
                *(
                    _cell(getattr(u, attr), u.limits.get(name), u.remaining.get(name))
                    for _, attr, name in _COLUMNS
                ),
                _usd_cell(u.spend_day_nanos, u.budget.get("daily_usd")),
                _usd_cell(u.spend_month_nanos, u.budget.get("monthly_usd")),
            ]
        )
    if not usages:
        return "no keys configured"
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for row in rows:
        # Key ids align left, numbers right, as in `kubectl top` and friends.
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
