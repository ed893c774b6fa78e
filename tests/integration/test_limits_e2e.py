"""Limits that hold across replicas: two real gateway processes sharing one real Redis,
and the same behaviour from one process on the in-memory backend."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.config import hash_key
from tests.support.fake_upstream import FakeUpstream, Seen
from tests.support.gateway_proc import ADMIN_KEY, GatewayProcess, test_config
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.redis

KEYS = {
    "rpm": ("sk-rpm", {"rpm": 10}),
    "conc": ("sk-conc", {"max_concurrent": 3}),
    "conc2": ("sk-conc2", {"max_concurrent": 2}),
    "quota": ("sk-quota", {"daily_tokens": 300}),
    "free": ("sk-free", {}),
}


def limits_config(upstream: FakeUpstream, redis_url: str, **extra: Any) -> dict[str, Any]:
    config = test_config(upstream.url, redis_url=redis_url, **extra)
    config["keys"] = [
        {"id": name, "key_sha256": hash_key(secret), "limits": limits}
        for name, (secret, limits) in KEYS.items()
    ]
    config["models"].append(
        {"name": "gpt-long", "provider": "fake", "upstream_model": "text?n=20&pace_ms=100"}
    )
    return config


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        server.start()
        yield server


@pytest.fixture(scope="module", params=["redis", "memory"])
def replicas(
    request: pytest.FixtureRequest,
    upstream: FakeUpstream,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[GatewayProcess]]:
    """Two gateways on one Redis, or one gateway on the in-memory backend."""
    tmp = tmp_path_factory.mktemp("limits")
    if request.param == "redis":
        config = limits_config(upstream, redis_server.url)
        procs = [GatewayProcess(config, tmp).start(), GatewayProcess(config, tmp).start()]
    else:
        procs = [GatewayProcess(limits_config(upstream, ""), tmp).start()]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.stop()


def chat(
    gateway: GatewayProcess, key: str, model: str = "gpt-test", **extra: Any
) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    with httpx.Client(timeout=30) as client:
        return client.post(
            gateway.url + "/v1/chat/completions",
            headers={"authorization": f"Bearer {key}"},
            json=body,
        )


def usage(gateway: GatewayProcess, key_id: str) -> dict[str, Any]:
    rows = httpx.get(
        gateway.url + "/admin/usage", headers={"authorization": f"Bearer {ADMIN_KEY}"}
    ).json()["data"]
    return next(row for row in rows if row["key_id"] == key_id)


def usage_when(
    gateway: GatewayProcess, key_id: str, check: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The key's usage once `check` holds on it: what the gateway does off the request path
    (settles) or has yet to start (a stream's admission) is waited for, not slept on (a
    fixed 0.5 s was not always enough on a busy box). Fails after 10 s."""
    deadline = time.monotonic() + 10
    while not check(row := usage(gateway, key_id)):
        assert time.monotonic() < deadline, f"{key_id}: {row}"
        time.sleep(0.02)
    return row


def settled(gateway: GatewayProcess, key_id: str) -> dict[str, Any]:
    """The key's usage once every admitted request is settled: the settle that corrects a
    request's tokens also frees its concurrency slot, in one script."""
    return usage_when(gateway, key_id, lambda row: row["concurrent"] == 0)


def test_rpm_10_admits_exactly_10_of_30(replicas: list[GatewayProcess]) -> None:
    key = KEYS["rpm"][0]
    with ThreadPoolExecutor(10) as pool:
        statuses = list(
            pool.map(lambda i: chat(replicas[i % len(replicas)], key).status_code, range(30))
        )
    assert statuses.count(200) == 10, statuses
    assert statuses.count(429) == 20
    denied = chat(replicas[0], key)
    assert denied.status_code == 429
    assert int(denied.headers["retry-after"]) >= 1
    assert denied.headers["x-ratelimit-limit-requests"] == "10"
    assert denied.headers["x-ratelimit-remaining-requests"] == "0"
    assert denied.json()["error"]["code"] == "rate_limit_exceeded"
    with pytest.raises(openai.RateLimitError):
        openai.OpenAI(
            base_url=replicas[-1].url + "/v1", api_key=key, max_retries=0
        ).chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])


def max_overlap(seen: list[Seen]) -> int:
    edges = sorted(
        [(s.started, 1) for s in seen] + [(s.ended or time.monotonic(), -1) for s in seen]
    )
    open_now = peak = 0
    for _, delta in edges:
        open_now += delta
        peak = max(peak, open_now)
    return peak


def test_max_concurrent_3_holds_across_replicas(
    replicas: list[GatewayProcess], upstream: FakeUpstream
) -> None:
    key = KEYS["conc"][0]
    before = len(upstream.seen)

    def one(i: int) -> int:
        response = chat(replicas[i % len(replicas)], key, "gpt-long", stream=True)
        return response.status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(one, range(8)))
    mine = [s for s in upstream.seen[before:] if "pace_ms=100" in str(s.body.get("model"))]
    assert statuses.count(200) == len(mine) >= 3
    assert max_overlap(mine) <= 3
    assert statuses.count(429) == 8 - len(mine)
    # Slots come back when streams end.
    assert chat(replicas[0], key, "gpt-long", stream=True).status_code == 200


def test_a_repeated_x_request_id_does_not_bypass_max_concurrent(
    replicas: list[GatewayProcess],
) -> None:
    """Six overlapping streams sending one x-request-id to a max_concurrent 2 key: two are
    admitted (the lease is the gateway's, the id only names the request in logs)."""
    key = KEYS["conc2"][0]

    def one(_: int) -> int:
        with httpx.Client(timeout=30) as client:
            response = client.post(
                replicas[0].url + "/v1/chat/completions",
                headers={"authorization": f"Bearer {key}", "x-request-id": "same-id-123"},
                json={
                    "model": "gpt-long",
                    "stream": True,
                    "messages": [{"role": "user", "content": "hi"}],
                },
            )
            assert response.headers["x-request-id"] == "same-id-123"
            return response.status_code

    with ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(one, range(6)))
    assert sorted(statuses) == [200, 200, 429, 429, 429, 429], statuses
    settled(replicas[0], "conc2")  # every slot given back


def test_token_quota_never_overshoots_by_more_than_one_reservation(
    replicas: list[GatewayProcess], upstream: FakeUpstream
) -> None:
    key = KEYS["quota"][0]
    with ThreadPoolExecutor(10) as pool:
        responses = list(
            pool.map(
                lambda i: chat(replicas[i % len(replicas)], key, max_tokens=20, stream=True),
                range(30),
            )
        )
    ok = [r for r in responses if r.status_code == 200]
    denied = [r for r in responses if r.status_code == 429]
    assert ok and denied and len(ok) + len(denied) == 30
    assert all(r.json()["error"]["code"] == "insufficient_quota" for r in denied)
    # Each admitted stream used 11 prompt + 12 completion tokens (the upstream's usage).
    row = settled(replicas[0], "quota")  # settles run off the request path
    assert row["tokens_day"] == 23 * len(ok)
    reservation = 4 + 20  # prompt estimate of "hi" + max_tokens
    assert row["tokens_day"] <= 300 + reservation


def test_a_disconnected_client_is_charged_what_it_received(replicas: list[GatewayProcess]) -> None:
    gateway = replicas[0]
    before = usage(gateway, "free")["tokens_day"]
    received = 0
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "POST",
            gateway.url + "/v1/chat/completions",
            headers={"authorization": f"Bearer {KEYS['free'][0]}"},
            json={
                "model": "gpt-long",
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
            },
        ) as response,
    ):
        for line in response.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get(
                "content"
            ):
                received += 1
            if received == 5:
                break
    charged = settled(gateway, "free")["tokens_day"] - before  # once the gateway saw it go
    prompt_estimate = 4
    assert received + prompt_estimate <= charged <= received + prompt_estimate + 2


def test_backend_failure_open_admits_closed_refuses_both_recover(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    with RedisServer() as server:
        server.start()
        open_gw = GatewayProcess(limits_config(upstream, server.url), tmp_path).start()
        closed_gw = GatewayProcess(
            limits_config(upstream, server.url, limits_backend_failure="closed"), tmp_path
        ).start()
        try:
            key = KEYS["free"][0]
            assert chat(open_gw, key).status_code == 200
            assert chat(closed_gw, key).status_code == 200
            server.stop()
            assert chat(open_gw, key).status_code == 200
            refused = chat(closed_gw, key)
            assert refused.status_code == 503
            assert refused.json()["error"]["type"] == "api_error"
            assert httpx.get(open_gw.url + "/readyz").status_code == 503
            text = httpx.get(open_gw.url + "/metrics").text
            errors = [
                float(line.split()[-1])
                for line in text.splitlines()
                if line.startswith("gateway_limiter_backend_errors_total ")
            ]
            assert errors and errors[0] >= 1
            server.start()
            deadline = time.monotonic() + 10
            while chat(closed_gw, key).status_code != 200:
                assert time.monotonic() < deadline, "closed mode did not recover"
                time.sleep(0.3)
            assert chat(open_gw, key).status_code == 200
            assert httpx.get(open_gw.url + "/readyz").status_code == 200
        finally:
            open_gw.stop()
            closed_gw.stop()


def test_a_killed_gateway_does_not_hold_its_slots_forever(
    upstream: FakeUpstream, redis_server: RedisServer, tmp_path: Path
) -> None:
    config = limits_config(upstream, redis_server.url, concurrency_lease_ttl=2)
    config["keys"] = [
        {"id": "one", "key_sha256": hash_key("sk-one"), "limits": {"max_concurrent": 1}}
    ]
    victim = GatewayProcess(config, tmp_path).start()
    survivor = GatewayProcess(config, tmp_path).start()
    try:
        client = httpx.Client(timeout=30)
        stream = client.stream(
            "POST",
            victim.url + "/v1/chat/completions",
            headers={"authorization": "Bearer sk-one"},
            json={
                "model": "gpt-long",
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
        response = stream.__enter__()
        assert response.status_code == 200
        assert chat(survivor, "sk-one").status_code == 429
        victim.proc.kill()  # type: ignore[union-attr]
        victim.proc.wait()  # type: ignore[union-attr]
        deadline = time.monotonic() + 10
        while chat(survivor, "sk-one").status_code != 200:
            assert time.monotonic() < deadline, "the dead process's slot never expired"
            time.sleep(0.25)
        client.close()
    finally:
        victim.stop()
        survivor.stop()


def test_redis_restart_during_streams_leaks_nothing(upstream: FakeUpstream, tmp_path: Path) -> None:
    """Redis (no persistence) restarts under two open streams: the streams finish, their
    settles neither fail nor drive counts negative, and no concurrency slot leaks."""
    with RedisServer() as server:
        server.start()
        config = limits_config(upstream, server.url, concurrency_lease_ttl=2)
        config["keys"] = [
            {
                "id": "two",
                "key_sha256": hash_key("sk-two"),
                "limits": {"max_concurrent": 2, "daily_tokens": 100_000},
            }
        ]
        with GatewayProcess(config, tmp_path) as gw, ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(chat, gw, "sk-two", "gpt-long", stream=True) for _ in range(2)]
            usage_when(gw, "two", lambda row: row["concurrent"] == 2)
            assert chat(gw, "sk-two").status_code == 429  # both slots taken
            server.stop()
            time.sleep(0.3)
            server.start()
            assert [f.result().status_code for f in futures] == [200, 200]
            # Their settles leave as the streams end; their leases died with Redis, so the
            # usage cannot show them arriving: a margin, not a condition.
            time.sleep(0.5)
            row = usage(gw, "two")
            assert row["concurrent"] == 0
            assert row["tokens_day"] >= 0 and row["tokens_minute"] >= 0
            before = row["tokens_day"]
            # Both slots are free again, exactly two.
            with ThreadPoolExecutor(3) as burst:
                statuses = sorted(
                    burst.map(
                        lambda _: chat(gw, "sk-two", "gpt-long", stream=True).status_code, range(3)
                    )
                )
            assert statuses == [200, 200, 429]
            # Charged once each: 11 prompt + 20 completion tokens per finished stream.
            assert settled(gw, "two")["tokens_day"] - before == 2 * 31
