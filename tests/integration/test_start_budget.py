"""`max_requests_per_loop_turn` through the real server: a burst of concurrent streams
all start (in turns) and every one arrives whole."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway_proc import KEY_A, GatewayProcess, test_config


async def _stream(client: httpx.AsyncClient, url: str) -> list[str]:
    body = {"model": "gpt-test", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    async with client.stream(
        "POST", url, headers={"authorization": f"Bearer {KEY_A}"}, json=body
    ) as response:
        assert response.status_code == 200
        return [line async for line in response.aiter_lines() if line.startswith("data: ")]


def test_a_burst_is_served_whole_with_two_starts_per_turn(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    config = test_config(upstream.url, max_requests_per_loop_turn=2)
    with GatewayProcess(config, tmp_path) as gateway:

        async def burst() -> list[list[str]]:
            limits = httpx.Limits(max_connections=40)
            async with httpx.AsyncClient(timeout=30, limits=limits) as client:
                url = gateway.url + "/v1/chat/completions"
                return await asyncio.gather(*(_stream(client, url) for _ in range(40)))

        streams = asyncio.run(burst())
    whole = [s for s in streams if s and s[-1] == "data: [DONE]"]
    assert len(whole) == 40
    assert len({len(s) for s in streams}) == 1  # every stream carried the same events
