"""What `GET /admin/spend` and `gateway spend` share without the database libraries: the
query's parameters checked, the failure the ledger raises, the answer as a table.

Deliberately not here: reading the database (`gateway.observability.ledger`, which loads
SQLAlchemy; a gateway without `database_url` never imports it).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any

from gateway.errors import InvalidRequest

GROUPS = ("day", "model")


class LedgerUnavailable(Exception):
    """The ledger's database could not be read."""


def parse_time(value: str, name: str) -> float:
    """Unix time of `2025-01-31`, `2025-01-31T12:00:00Z` (UTC unless an offset is given) or
    unix seconds."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(
            f"'{name}' must be a date (2025-01-31), an ISO 8601 time or unix seconds.",
            param=name,
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def spend_query(params: Mapping[str, str]) -> dict[str, Any]:
    """The keyword arguments of `Ledger.spend` from the query string; InvalidRequest for
    anything else. `to` is exclusive: `from=2025-01-01&to=2025-02-01` is January."""
    unknown = set(params) - {"key_id", "from", "to", "group_by"}
    if unknown:
        name = sorted(unknown)[0][:50]
        raise InvalidRequest(f"Unknown parameter '{name}'.", param=name)
    group_by = params.get("group_by", "day")
    if group_by not in GROUPS:
        raise InvalidRequest("'group_by' must be day or model.", param="group_by")
    since = parse_time(params["from"], "from") if params.get("from") else None
    until = parse_time(params["to"], "to") if params.get("to") else None
    return {
        "key_id": params.get("key_id") or None,
        "since": since,
        "until": until,
        "group_by": group_by,
    }


def format_spend_table(rows: list[dict[str, Any]], group_by: str) -> str:
    """A fixed-width table of `/admin/spend`'s rows, with a total line."""
    if not rows:
        return "no spend recorded"
    header = ["KEY", group_by.upper(), "REQUESTS", "PROMPT", "COMPLETION", "USD"]
    lines = [header]
    total_nanos = 0
    for row in rows:
        total_nanos += round(row["cost_usd"] * 1e9)
        lines.append(
            [
                str(row["key_id"]),
                str(row[group_by]),
                f"{row['requests']:,}",
                f"{row['prompt_tokens']:,}",
                f"{row['completion_tokens']:,}",
                f"${row['cost_usd']:,.6f}",
            ]
        )
    lines.append(["TOTAL", "", "", "", "", f"${total_nanos / 1e9:,.6f}"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for line in lines:
        cells = [line[0].ljust(widths[0]), line[1].ljust(widths[1])]
        cells += [c.rjust(w) for c, w in zip(line[2:], widths[2:], strict=True)]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)
