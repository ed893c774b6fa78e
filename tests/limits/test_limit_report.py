"""Usage as JSON rows (the admin route) and as a table (`gateway usage`)."""

from __future__ import annotations

import json

from gateway.config import Budget, KeyConfig
from gateway.limits.base import KeyUsage
from gateway.limits.report import format_usage_table, key_usage, usage_of_row, usage_rows
from tests.limits.limits_support import key


def _usages() -> list[KeyUsage]:
    return [
        key_usage(
            key("team-a", rpm=60, tpm=100_000, max_concurrent=4, daily_tokens=2_000_000),
            requests_minute=12,
            tokens_minute=3_400,
            tokens_day=250_000,
            tokens_month=1_250_000,
            concurrent=2,
        ),
        key_usage(
            key("batch-jobs"),
            requests_minute=0,
            tokens_minute=0,
            tokens_day=0,
            tokens_month=7,
            concurrent=0,
        ),
    ]


def test_key_usage_reports_every_limit_and_what_remains() -> None:
    usage = _usages()[0]
    assert usage.limits == {
        "rpm": 60,
        "tpm": 100_000,
        "max_concurrent": 4,
        "daily_tokens": 2_000_000,
        "monthly_tokens": None,
    }
    assert usage.remaining == {
        "rpm": 48,
        "tpm": 96_600,
        "max_concurrent": 2,
        "daily_tokens": 1_750_000,
        "monthly_tokens": None,
    }


def test_remaining_is_never_negative() -> None:
    usage = key_usage(
        key(tpm=100),
        requests_minute=1,
        tokens_minute=130,
        tokens_day=130,
        tokens_month=130,
        concurrent=0,
    )
    assert usage.remaining["tpm"] == 0


def test_rows_are_json_and_round_trip_into_key_usage() -> None:
    usages = _usages()
    rows = usage_rows(usages)
    assert json.loads(json.dumps(rows)) == rows
    assert rows[0]["key_id"] == "team-a" and rows[0]["limits"]["rpm"] == 60
    # `gateway usage` rebuilds KeyUsage from the admin route's rows.
    assert [usage_of_row(row) for row in rows] == usages


def test_the_table_has_one_aligned_line_per_key() -> None:
    table = format_usage_table(_usages())
    lines = table.splitlines()
    assert len(lines) == 3
    assert lines[0].split() == [
        "KEY",
        "REQ/MIN",
        "TOKENS/MIN",
        "TOKENS/DAY",
        "TOKENS/MONTH",
        "CONCURRENT",
        "USD/DAY",
        "USD/MONTH",
    ]
    assert lines[1].startswith("team-a ")
    assert "12/60 (48 left)" in lines[1]
    assert "3,400/100,000 (96,600 left)" in lines[1]
    assert "250,000/2,000,000 (1,750,000 left)" in lines[1]
    assert "2/4 (2 left)" in lines[1]
    assert lines[2].startswith("batch-jobs ") and lines[2].endswith(" $0.0000")
    # Right-aligned columns: every header ends where its column's cells end.
    end = lines[0].index("USD/MONTH") + len("USD/MONTH")
    assert all(len(line) == end for line in lines)


def test_an_empty_table_says_so() -> None:
    assert format_usage_table([]) == "no keys configured"


def test_spend_shows_against_the_budget_in_rows_and_table() -> None:
    k = KeyConfig(id="team-a", key_sha256="0" * 64, budget=Budget(daily_usd=20.0, monthly_usd=None))
    usage = key_usage(
        k,
        requests_minute=1,
        tokens_minute=10,
        tokens_day=10,
        tokens_month=10,
        concurrent=0,
        spend_day_nanos=1_250_000_000,
        spend_month_nanos=1_250_000_000,
    )
    (row,) = usage_rows([usage])
    assert row["spend_day_usd"] == 1.25 and row["budget"] == {
        "daily_usd": 20.0,
        "monthly_usd": None,
    }
    assert usage_of_row(row) == usage
    line = format_usage_table([usage]).splitlines()[1]
    assert line.split()[-2:] == ["$1.2500/$20.00", "$1.2500"]
