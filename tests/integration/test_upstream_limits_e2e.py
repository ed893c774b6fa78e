"""A deployment's upstream account rpm holds across two replicas, and clients never see the
provider's 429 (SPEC section 10, issue 20).

Two real `gateway serve` processes share one real Redis. Model `gpt-4o` has two
deployments (the config syntax of SPEC section 10): `acct-a`, weight 3, whose account
allows `rpm: 1`, and `acct-b`, unlimited. Each is a fake OpenAI upstream on its own socket;
`acct-a`'s enforces its account's rpm as OpenAI does (a 429 with `rate_limit_exceeded`,
`retry-after` and `x-ratelimit-*` headers beyond it). Clients are the official OpenAI SDK
with retries off, so a 429 reaching them fails the test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from gateway.config import hash_key
from tests.support.fake_upstream import FakeUpstream, Seen
from tests.support.gateway_proc import GatewayProcess
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.redis

KEY = "sk-upstream-limits-e2e"
ACCOUNT_RPM = 1


class AccountLimitedUpstream(FakeUpstream):
    """A fake OpenAI upstream whose account allows `rpm` requests a minute: beyond them it
    answers as OpenAI does, 429 `rate_limit_exceeded`, and counts the refusal."""

    def __init__(self, rpm: int) -> None:
        super().__init__()
        self.rpm = rpm
        self.served: list[float] = []
        self.refused = 0

    async def _answer(
        self, seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        now = time.monotonic()
        if sum(now - t < 60 for t in self.served) >= self.rpm:
            self.refused += 1
            body = orjson.dumps(
                {
                    "error": {
                        "message": "Rate limit reached for gpt-4o on requests per min (RPM): "
                        f"Limit {self.rpm}, Used {self.rpm}, Requested 1.",
                        "type": "requests",
                        "param": None,
                        "code": "rate_limit_exceeded",
                    }
                }
            )
            head = (
                "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n"
                f"retry-after: 60\r\nx-ratelimit-limit-requests: {self.rpm}\r\n"
                "x-ratelimit-remaining-requests: 0\r\nx-ratelimit-reset-requests: 1m0s\r\n"
                f"content-length: {len(body)}\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
            return True
        self.served.append(now)
        return await super()._answer(seen, reader, writer)


def _config(a: FakeUpstream, b: FakeUpstream, redis_url: str) -> dict[str, Any]:
    return {
        "redis_url": redis_url,
        "providers": [
            {
                "name": name,
                "type": "openai",
                "base_url": upstream.url + "/v1",
                "api_key": f"sk-{name}-upstream-secret",
                "max_retries": 0,
            }
            for name, upstream in (("acct-a", a), ("acct-b", b))
        ],
        "models": [
            {
                "name": "gpt-4o",
                "deployments": [
                    {
                        "provider": "acct-a",
                        "upstream_model": "text?n=3",
                        "weight": 3,
                        "limits": {"rpm": ACCOUNT_RPM},
                    },
                    {"provider": "acct-b", "upstream_model": "text?n=3", "weight": 1},
                ],
                "routing": "weighted",
            }
        ],
        "keys": [{"id": "e2e", "key_sha256": hash_key(KEY)}],
        "timeouts": {"connect": 2, "first_token": 10, "idle": 10, "total": 30},
    }


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[AccountLimitedUpstream, FakeUpstream, list[GatewayProcess]]]:
    tmp: Path = tmp_path_factory.mktemp("upstream-limits")
    with (
        RedisServer() as redis,
        AccountLimitedUpstream(ACCOUNT_RPM) as a,
        FakeUpstream() as b,
    ):
        redis.start()
        config = _config(a, b, redis.url)
        with GatewayProcess(config, tmp) as one, GatewayProcess(config, tmp) as two:
            yield a, b, [one, two]


def test_a_deployments_rpm_holds_across_two_replicas_and_clients_see_no_429(
    setup: tuple[AccountLimitedUpstream, FakeUpstream, list[GatewayProcess]],
) -> None:
    a, b, replicas = setup

    async def ask(url: str) -> str:
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0) as client:
            stream = await client.chat.completions.create(
                model="gpt-4o",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                max_tokens=20,
            )
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def traffic() -> list[str]:
        # 12 requests on each replica at once: acct-a (weight 3) is each replica's first
        # choice, but its account has room for one request this minute, across both
        return await asyncio.gather(*(ask(r.url) for _ in range(12) for r in replicas))

    answers = asyncio.run(traffic())
    assert answers == ["tok0 tok1 tok2 "] * 24  # every client answered, none saw a 429
    assert len(a.served) == ACCOUNT_RPM  # the account's rpm held across both replicas
    assert a.refused == 0  # and the gateway never collected the provider's 429
    assert len(b.seen) == 24 - ACCOUNT_RPM
