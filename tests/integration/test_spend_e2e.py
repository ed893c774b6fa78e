"""Spend in dollars through the real server: the price table applied to the
upstream's reported usage, budgets held across two replicas on one Redis, a disconnect
charged what was streamed, and the request ledger in the database.

Expected costs are computed here from the prices written in this file, not with
`gateway.pricing`, so a mistake there cannot hide in both sides.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from gateway.config import hash_key
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway_proc import ADMIN_KEY, GatewayProcess, test_config
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.redis

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
KEY_SPEND = "sk-spend"
KEY_OTHER = "sk-spend-other"

# USD per million tokens, as the config below says
GPT = {"input": 2.5, "output": 10.0, "cached_input": 1.25}
CLAUDE = {"input": 3.0, "output": 15.0, "cached_input": 0.3, "cache_write": 3.75}
MINI = {"input": 0.15, "output": 0.6}  # gpt-4o-mini from the shipped default table


def expected_gpt(prompt: int, cached: int, completion: int) -> float:
    return ((prompt - cached) * GPT["input"] + cached * GPT["cached_input"]) / 1e6 + (
        completion * GPT["output"]
    ) / 1e6


GPT_COST = expected_gpt(11, 6, 12)
"""`text?n=12&cached=6&reasoning=4`: 11 prompt tokens (6 of them cached), 12 completion."""
CLAUDE_COST = (11 * 3.0 + 20 * 0.3 + 30 * 3.75 + 12 * 15.0) / 1e6
"""`text?n=12&cached=20&cache_write=30`: 11 plain input, 20 read, 30 written, 12 out."""
MINI_COST = (11 * MINI["input"] + 12 * MINI["output"]) / 1e6


def spend_config(upstream: FakeUpstream, **overrides: Any) -> dict[str, Any]:
    config = test_config(upstream.url, **overrides)
    config["models"] += [
        {
            "name": "gpt-priced",
            "provider": "fake",
            "upstream_model": "text?n=12&cached=6&reasoning=4",
        },
        {
            "name": "claude-priced",
            "provider": "fake-anthropic",
            "upstream_model": "text?n=12&cached=20&cache_write=30",
        },
        {"name": "gpt-4o-mini", "provider": "fake", "upstream_model": "text?n=12"},
        {"name": "gpt-long", "provider": "fake", "upstream_model": "text?n=400&pace_ms=10"},
    ]
    config["pricing"] = {
        "gpt-priced": GPT,
        "claude-priced": CLAUDE,
        "gpt-long": GPT,
        # a fallback is charged at the prices of the model that answered
        "gpt-fallback": {"input": 1000.0, "output": 1000.0},
        "claude-test": CLAUDE,
    }
    config["keys"] = [
        {
            "id": "spender",
            "key_sha256": hash_key(KEY_SPEND),
            "budget": {"daily_usd": round(3 * GPT_COST, 9)},
        },
        {"id": "other", "key_sha256": hash_key(KEY_OTHER)},
    ]
    return config


def stream(gateway: GatewayProcess, key: str, model: str, stop_after: int = 0) -> httpx.Response:
    """A streamed chat request read to its end, or closed after `stop_after` content chunks."""
    body = {
        "model": model,
        "stream": True,
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "hi"}],
    }
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST",
            gateway.url + "/v1/chat/completions",
            headers={"authorization": f"Bearer {key}"},
            json=body,
        ) as response,
    ):
        if response.status_code != 200:
            response.read()
            return response
        seen = 0
        for line in response.iter_lines():
            if stop_after and '"content":"tok' in line:
                seen += 1
                if seen >= stop_after:
                    break
    return response


def request_lines(gateway: GatewayProcess) -> list[dict[str, Any]]:
    lines = []
    for raw in gateway.output().splitlines():
        if raw.startswith("{") and '"event":"request"' in raw:
            lines.append(json.loads(raw))
    return lines


def wait_for(predicate: Any, timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def lines_for(gateway: GatewayProcess, n: int) -> list[dict[str, Any]]:
    """The request log's lines once there are at least `n` (it is written in batches)."""
    return wait_for(  # type: ignore[no-any-return]
        lambda: (lines := request_lines(gateway)) and len(lines) >= n and lines,
        what=f"{n} request log lines",
    )


def usage_of(gateway: GatewayProcess, key_id: str) -> dict[str, Any]:
    rows = httpx.get(gateway.url + "/admin/usage", headers=ADMIN, timeout=10).json()["data"]
    return next(row for row in rows if row["key_id"] == key_id)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        server.start()
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The module's Redis, emptied for this test."""
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


def test_cost_is_the_price_table_applied_to_the_reported_usage(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    with GatewayProcess(spend_config(upstream), tmp_path) as gw:
        for model in ("gpt-priced", "claude-priced", "gpt-4o-mini", "gpt-fallback"):
            assert stream(gw, KEY_OTHER, model).status_code == 200
        lines = {line["model"]: line for line in lines_for(gw, 4)}
        fallback = lines["gpt-fallback"]
        assert fallback["provider"] == "fake-anthropic"
        answered = (fallback["prompt_tokens"] * 3.0 + fallback["completion_tokens"] * 15.0) / 1e6
        assert abs(fallback["cost_usd"] - answered) < 1e-9
        gpt, claude, mini = lines["gpt-priced"], lines["claude-priced"], lines["gpt-4o-mini"]
        assert gpt["usage_reported"] and claude["usage_reported"]
        assert (gpt["prompt_tokens"], gpt["completion_tokens"]) == (11, 12)
        assert (gpt["cached_tokens"], gpt["reasoning_tokens"]) == (6, 4)
        assert (claude["prompt_tokens"], claude["cached_tokens"]) == (61, 20)
        assert claude["cache_write_tokens"] == 30
        assert abs(gpt["cost_usd"] - GPT_COST) < 1e-9
        assert abs(claude["cost_usd"] - CLAUDE_COST) < 1e-9
        assert abs(mini["cost_usd"] - MINI_COST) < 1e-9

        metrics = httpx.get(gw.url + "/metrics", timeout=10).text
        spent = {
            line.split("{", 1)[1].split("}", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("gateway_spend_usd_total{")
        }
        assert abs(spent['key_id="other",model="gpt-priced"'] - GPT_COST) < 1e-9
        assert abs(spent['key_id="other",model="claude-priced"'] - CLAUDE_COST) < 1e-9
        usage = usage_of(gw, "other")
        total = GPT_COST + CLAUDE_COST + MINI_COST + answered
        assert abs(usage["spend_day_usd"] - total) < 1e-9
    # start-up named the models without a price (those of the shared test config)
    assert "models without a price" in gw.output() and "gpt-tools" in gw.output()


def test_a_budget_for_n_requests_admits_n_across_two_replicas_and_refuses_on_both(
    upstream: FakeUpstream, redis_url: str, tmp_path: Path
) -> None:
    config = spend_config(upstream, redis_url=redis_url)
    with GatewayProcess(config, tmp_path) as a, GatewayProcess(config, tmp_path) as b:
        replicas = [a, b]
        for i in range(3):
            response = stream(replicas[i % 2], KEY_SPEND, "gpt-priced")
            assert response.status_code == 200, response.text
            # settles leave after the answer: wait until both replicas count it
            for gw in replicas:
                wait_for(
                    lambda gw=gw, i=i: (
                        abs(usage_of(gw, "spender")["spend_day_usd"] - (i + 1) * GPT_COST) < 1e-9
                    ),
                    what=f"spend of {i + 1} requests",
                )
        for gw in replicas:
            refused = stream(gw, KEY_SPEND, "gpt-priced")
            assert refused.status_code == 429
            error = refused.json()["error"]
            assert error["code"] == "insufficient_quota"
            assert "daily budget of $0.00042." in error["message"]
            assert "resets at" in error["message"] and "00:00 UTC" in error["message"]
            assert 0 < int(refused.headers["retry-after"]) <= 86400
        # another key is not affected
        assert stream(a, KEY_OTHER, "gpt-priced").status_code == 200


def test_a_disconnect_is_charged_what_was_streamed(
    upstream: FakeUpstream, redis_url: str, tmp_path: Path
) -> None:
    config = spend_config(upstream, redis_url=redis_url)
    with GatewayProcess(config, tmp_path) as gw:
        stream(gw, KEY_OTHER, "gpt-long", stop_after=20)
        (line,) = wait_for(
            lambda: [x for x in request_lines(gw) if x["model"] == "gpt-long"],
            what="the cancelled stream's log line",
        )
        assert line["outcome"] == "client_cancelled" and not line["usage_reported"]
        assert 20 <= line["completion_tokens"] < 400
        streamed = expected_gpt(line["prompt_tokens"], 0, line["completion_tokens"])
        assert abs(line["cost_usd"] - streamed) < 1e-9
        # the limiter was settled to that cost, not left at the reservation (50 tokens out)
        wait_for(
            lambda: abs(usage_of(gw, "other")["spend_day_usd"] - streamed) < 1e-9,
            what="the settle of the cancelled stream",
        )


def ledger_config(upstream: FakeUpstream, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    return spend_config(
        upstream,
        database_url=f"sqlite:///{tmp_path / 'ledger.db'}",
        logging={"sinks": ["stdout", "database"], "batch_size": 16},
        **overrides,
    )


def spend_rows(gateway: GatewayProcess, **params: str) -> list[dict[str, Any]]:
    response = httpx.get(gateway.url + "/admin/spend", params=params, headers=ADMIN, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["data"]  # type: ignore[no-any-return]


def ledger_count(gateway: GatewayProcess) -> int:
    return sum(row["requests"] for row in spend_rows(gateway))


def test_the_ledger_s_sums_equal_the_log_lines_and_survive_a_restart_and_a_redis_flush(
    upstream: FakeUpstream, redis_url: str, tmp_path: Path
) -> None:
    config = ledger_config(upstream, tmp_path, redis_url=redis_url)
    plan = [
        (KEY_OTHER, "gpt-priced", 0),
        (KEY_OTHER, "claude-priced", 0),
        (KEY_SPEND, "gpt-priced", 0),
        (KEY_OTHER, "gpt-4o-mini", 0),
        (KEY_OTHER, "gpt-long", 15),  # a disconnect: charged what was streamed
        (KEY_SPEND, "gpt-priced", 0),
    ]
    with GatewayProcess(config, tmp_path) as gw:
        for key, model, stop_after in plan:
            stream(gw, key, model, stop_after=stop_after)
        lines = lines_for(gw, len(plan))
        wait_for(lambda: ledger_count(gw) == len(plan), what="the ledger's rows")
        by_model = spend_rows(gw, group_by="model")
        by_day = spend_rows(gw, key_id="spender")
        refused = httpx.get(
            gw.url + "/admin/spend", params={"group_by": "hour"}, headers=ADMIN, timeout=10
        )
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "group_by"

    expected: dict[tuple[str, str], float] = {}
    for line in lines:
        pair = (line["key_id"], line["model"])
        expected[pair] = expected.get(pair, 0.0) + line["cost_usd"]
    got = {(row["key_id"], row["model"]): row["cost_usd"] for row in by_model}
    assert got.keys() == expected.keys()
    for pair, cost in expected.items():
        assert abs(got[pair] - cost) < 1e-9, pair
    assert sum(row["requests"] for row in by_model) == len(plan)
    (day,) = by_day
    assert day["requests"] == 2 and abs(day["cost_usd"] - 2 * GPT_COST) < 1e-9
    assert day["day"] == lines[0]["timestamp"][:10]

    # Redis forgets everything, the gateway restarts: the ledger still has the spend
    with redis.Redis.from_url(redis_url) as client:
        client.flushall()
    with GatewayProcess(config, tmp_path) as again:
        assert spend_rows(again, group_by="model") == by_model
        today = time.strftime("%Y-%m-%d", time.gmtime())
        assert spend_rows(again, key_id="spender", to=today) == []  # `to` is exclusive
        cli = subprocess.run(
            [sys.executable, "-m", "gateway", "spend", "--url", again.url, "--group-by", "model"],
            env={**os.environ, "GATEWAY_ADMIN_KEY": ADMIN_KEY},
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert "claude-priced" in cli.stdout and "TOTAL" in cli.stdout
        total = sum(expected.values())
        assert f"${total:,.6f}" in cli.stdout


def test_a_model_of_two_upstream_models_is_charged_as_the_deployment_that_answered(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """One model, two deployments of different upstream models (the first priced by the
    model's `pricing:` entry, the second `gpt-4o-mini` from the default table), alternating:
    the log line, the spend metric, the ledger and the trace each charge a request at the
    prices of the deployment that answered it."""
    plain = 12 * GPT["output"] / 1e6 + 11 * GPT["input"] / 1e6  # `text?n=12`, no cache
    with OtlpReceiver() as receiver:
        config = ledger_config(upstream, tmp_path, tracing={"otlp_endpoint": receiver.url})
        config["models"].append(
            {
                "name": "split",
                "deployments": [
                    {"provider": "fake", "upstream_model": "text?n=12", "name": "big"},
                    {"provider": "fake", "upstream_model": "gpt-4o-mini", "name": "small"},
                ],
            }
        )
        config["pricing"]["split"] = GPT
        with GatewayProcess(config, tmp_path) as gw:
            for _ in range(4):
                assert stream(gw, KEY_OTHER, "split").status_code == 200
            lines = [line for line in lines_for(gw, 4) if line["model"] == "split"]
            wait_for(lambda: ledger_count(gw) == 4, what="the ledger's rows")
            (row,) = spend_rows(gw, group_by="model")
            metrics = httpx.get(gw.url + "/metrics", timeout=10).text
        spans = [s for s in receiver.spans if s.kind == "SERVER"]
    costs = sorted((line["deployment"], line["cost_usd"]) for line in lines)
    assert [d for d, _ in costs] == ["big", "big", "small", "small"]
    for deployment, cost in costs:
        assert abs(cost - (plain if deployment == "big" else MINI_COST)) < 1e-9, deployment
    total = 2 * plain + 2 * MINI_COST
    assert row["model"] == "split" and abs(row["cost_usd"] - total) < 1e-9
    spent = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith('gateway_spend_usd_total{key_id="other",model="split"}')
    ]
    assert len(spent) == 1 and abs(spent[0] - total) < 1e-9
    traced = sorted(
        (s.attributes["gateway.deployment"], s.attributes["gateway.cost_usd"]) for s in spans
    )
    assert len(traced) == 4
    for (deployment, cost), (logged, logged_cost) in zip(traced, costs, strict=True):
        assert deployment == logged and abs(cost - logged_cost) < 1e-9


async def _gaps_of_streams(gateway: GatewayProcess, model: str, n: int) -> list[float]:
    """Seconds between successive content chunks of `n` concurrent streams, as clients see
    them."""
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {KEY_OTHER}"}

    async def one(client: httpx.AsyncClient) -> list[float]:
        gaps, last = [], None
        url = gateway.url + "/v1/chat/completions"
        async with client.stream("POST", url, headers=headers, json=body) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if '"content":"tok' in line:
                    now = time.perf_counter()
                    if last is not None:
                        gaps.append(now - last)
                    last = now
        return gaps

    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        results = await asyncio.gather(*(one(client) for _ in range(n)))
    return [gap for gaps in results for gap in gaps]


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[int(len(ordered) * 0.99)]


def test_a_stalled_database_never_slows_a_stream(upstream: FakeUpstream, tmp_path: Path) -> None:
    """Streams through a gateway whose ledger database is locked, side by side with the same
    streams through a twin whose database answers: both are timed at the same moments of a
    busy box. (Timed one after the other, a change in the box's load between the two runs
    was enough to fail the comparison.)"""

    def steady(directory: Path) -> dict[str, Any]:
        directory.mkdir()
        config = ledger_config(upstream, directory)
        config["models"].append(
            {"name": "gpt-steady", "provider": "fake", "upstream_model": "text?n=60&pace_ms=10"}
        )
        config["pricing"]["gpt-steady"] = GPT
        return config

    async def side_by_side(calm: GatewayProcess, held: GatewayProcess) -> list[list[float]]:
        return await asyncio.gather(
            _gaps_of_streams(calm, "gpt-steady", streams),
            _gaps_of_streams(held, "gpt-steady", streams),
        )

    streams = 20
    calm_dir, held_dir = tmp_path / "calm", tmp_path / "held"
    with (
        GatewayProcess(steady(calm_dir), calm_dir) as calm,
        GatewayProcess(steady(held_dir), held_dir) as gw,
    ):
        # Another connection holds the database's write lock: every ledger write waits
        # out SQLite's busy timeout and fails, and is tried again.
        lock = sqlite3.connect(held_dir / "ledger.db", isolation_level=None)
        try:
            lock.execute("BEGIN EXCLUSIVE")
            baseline, stalled = asyncio.run(side_by_side(calm, gw))
            # the stdout sink of the same queue is not held up by the database
            lines_for(gw, streams)
            assert "request ledger: the database refused a batch" in wait_for(
                lambda: "request ledger" in gw.output() and gw.output(),
                what="the ledger's warning",
            )
        finally:
            lock.rollback()
            lock.close()
        wait_for(lambda: ledger_count(calm) == streams, what="the twin's ledger rows")
        # once the database answers, the buffered lines are written: nothing was lost
        wait_for(lambda: ledger_count(gw) == streams, timeout=20, what="the retried rows")
    before, during = p99(baseline), p99(stalled)
    print(f"inter-token p99: {before * 1000:.1f} ms calm, {during * 1000:.1f} ms stalled")
    assert len(stalled) == len(baseline) == streams * 59
    # wide margin: a stream held behind a 3 s database wait would show seconds here
    assert during < max(3 * before, before + 0.1)


def test_a_runtime_key_s_budget_is_enforced_and_a_raised_budget_admits_again(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    config = spend_config(upstream, database_url=f"sqlite:///{tmp_path / 'keys.db'}")
    with GatewayProcess(config, tmp_path) as gw:
        created = httpx.post(
            gw.url + "/admin/keys",
            headers=ADMIN,
            json={"id": "runtime", "budget": {"monthly_usd": round(2 * GPT_COST, 9)}},
            timeout=10,
        )
        assert created.status_code == 201, created.text
        secret = created.json()["key"]
        wait_for(lambda: stream(gw, secret, "gpt-priced").status_code == 200, what="the key")
        assert stream(gw, secret, "gpt-priced").status_code == 200
        refused = stream(gw, secret, "gpt-priced")
        assert refused.status_code == 429
        assert "monthly budget" in refused.json()["error"]["message"]
        raised = httpx.patch(
            gw.url + "/admin/keys/runtime",
            headers=ADMIN,
            json={"budget": {"monthly_usd": 1.0}},
            timeout=10,
        )
        assert raised.status_code == 200, raised.text
        wait_for(lambda: stream(gw, secret, "gpt-priced").status_code == 200, what="the raise")
