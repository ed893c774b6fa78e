"""The shared upstream transport keeps no state between requests: an upstream's cookie is
never sent on a later request (which may be another tenant's).

A real socket, not respx: aiohttp's session has a cookie jar of its own, and it keeps
cookies only for host names (not IP addresses), so the upstream is reached as `localhost`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import get_args

import pytest

from gateway.config import GatewayConfig, ModelConfig, ProviderConfig, Timeouts, Transport
from gateway.providers.base import UpstreamCall
from gateway.providers.openai import OpenAIProvider
from gateway.transports import build_transport

ANSWER = b'{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}'


async def requests_seen(upstream_transport: Transport) -> list[dict[str, str]]:
    """Two plain calls to an upstream that sets a cookie on each answer; the headers of each
    request it received."""
    seen: list[dict[str, str]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                lines = head.decode().split("\r\n")[1:]
                headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
                seen.append(headers)
                await reader.readexactly(int(headers.get("content-length", "0")))
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"set-cookie: __cf_bm=tenant-a; Path=/; HttpOnly\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER)
                )
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass  # the transport closed its connection
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    provider = ProviderConfig(name="up", type="openai", base_url=f"http://localhost:{port}/v1")
    model = ModelConfig(name="m", provider="up")
    config = GatewayConfig(providers=(provider,), models=(model,), keys=())
    transport = build_transport(dataclasses.replace(config, upstream_transport=upstream_transport))
    call = UpstreamCall(
        route="chat.completions",
        body={"messages": [{"role": "user", "content": "hi"}]},
        model=model,
        stream=False,
        include_usage=False,
        request_id="req-1",
    )
    try:
        openai = OpenAIProvider(provider, transport, Timeouts())
        for _ in range(2):
            completion = await openai.complete(call)
            assert completion.body == ANSWER
    finally:
        await transport.aclose()
        server.close()
        await server.wait_closed()
    return seen


@pytest.mark.parametrize("upstream_transport", get_args(Transport))
def test_an_upstream_cookie_is_not_sent_back(upstream_transport: Transport) -> None:
    seen = asyncio.run(requests_seen(upstream_transport))

    assert len(seen) == 2
    assert [headers.get("cookie") for headers in seen] == [None, None]
