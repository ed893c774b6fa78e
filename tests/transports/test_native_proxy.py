"""The native transport's CONNECT tunnel against proxies that misbehave: every answer is
read within a bound, and each refusal is an httpx.ProxyError that shows no credentials.
(The real proxy, for all three transports, is in tests/integration/test_egress_proxy.py.)"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from gateway.egress import EgressProxies
from gateway.transports.native import NativeTransport

SECRET = "pr0xy-s3cret"


async def through_proxy(answer: bytes) -> tuple[BaseException, bytes]:
    """An https request through a proxy that reads the CONNECT head, writes `answer` and
    waits; what the request raised, and what the proxy was sent."""
    received = bytearray()
    closed = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.extend(await reader.readuntil(b"\r\n\r\n"))
        writer.write(answer)
        await writer.drain()
        await reader.read()  # until the transport gives up and closes
        writer.close()
        closed.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    egress = EgressProxies.from_env({"HTTPS_PROXY": f"http://gw:{SECRET}@127.0.0.1:{port}"})
    transport = NativeTransport(proxies=egress)
    request = httpx.Request(
        "POST",
        "https://api.example.com/v1/chat/completions",
        content=b"{}",
        extensions={"timeout": {"connect": 5.0, "read": 5.0}},
    )
    try:
        with pytest.raises(httpx.TransportError) as caught:
            await transport.handle_async_request(request)
        await asyncio.wait_for(closed.wait(), 5)  # the transport closed its connection
    finally:
        await transport.aclose()
        server.close()
        await server.wait_closed()
    return caught.value, bytes(received)


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n", "with status 407 (check the"),
        (b"HTTP/1.0 403 Forbidden\r\nContent-Length: 0\r\n\r\n", "with status 403"),
        (b"HTTP/1.1 502 Bad Gateway\r\n\r\n", "with status 502"),
        (b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 20_000, "longer than 16384 bytes"),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not HTTP"),
        (b"HTTP/1.1 200 OK\r\n\r\nsurprise", "bytes after its answer"),
    ],
)
def test_a_proxy_that_refuses_or_misbehaves_fails_the_request_clearly(
    answer: bytes, problem: str
) -> None:
    error, received = asyncio.run(through_proxy(answer))

    assert isinstance(error, httpx.ProxyError)
    assert problem in str(error)
    assert SECRET not in str(error)
    # The tunnel asked for is the origin's, with the proxy's credentials.
    assert received.startswith(b"CONNECT api.example.com:443 HTTP/1.1\r\n")
    assert b"Proxy-Authorization: Basic Z3c6cHIweHktczNjcmV0\r\n" in received
