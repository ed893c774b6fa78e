"""Every transport raises only httpx's exceptions, so the providers map one tree.

Real sockets, one broken upstream per case, through each of the three transports as
`build_transport` makes them: what a request or a body read raises is an httpx exception,
the class the providers' `upstream_errors` maps to the gateway kind the case deserves. The
table of aiohttp's exception classes is checked too, one instance each, against the kind
the gateway gave each of them when `upstream_errors` judged aiohttp's errors itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any, get_args

import aiohttp
import httpx
import pytest

from gateway.config import GatewayConfig, ModelConfig, ProviderConfig, Transport
from gateway.errors import UpstreamError
from gateway.providers.base import upstream_errors
from gateway.transports import MalformedResponse, build_transport
from gateway.transports.aiohttp import httpx_error

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.close()


async def not_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 twohundred OK\r\ncontent-length: 0\r\n\r\n")
    await writer.drain()
    await reader.read()  # until the client gives up on the connection
    writer.close()


async def break_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        b"transfer-encoding: chunked\r\n\r\n7\r\ndata: 1\r\n"
    )
    await writer.drain()
    writer.close()


@dataclasses.dataclass(frozen=True)
class Case:
    handler: Handler | None
    """None: nothing listens."""
    raised: dict[str, type[httpx.TransportError]]
    """The class each transport raises."""
    kind: str
    """The gateway error's kind for it."""
    in_body: bool = False


CASES = {
    "refused": Case(None, dict.fromkeys(get_args(Transport), httpx.ConnectError), "connect"),
    "hang-up": Case(
        hang_up, dict.fromkeys(get_args(Transport), httpx.RemoteProtocolError), "connection"
    ),
    "not-http": Case(
        not_http,
        {"native": MalformedResponse, "aiohttp": MalformedResponse},
        # httpx's own transport cannot tell malformed bytes from an early end (h11 says
        # RemoteProtocolError for both).
        "malformed",
    ),
    "mid-body": Case(
        break_mid_body,
        dict.fromkeys(get_args(Transport), httpx.RemoteProtocolError),
        "connection",
        in_body=True,
    ),
}


async def raised_by(transport_name: Transport, case: Case) -> BaseException:
    """What a request, then its body's reading, raises for `case`'s upstream."""
    if case.handler is None:
        probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()
        server = None
    else:
        server = await asyncio.start_server(case.handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
    provider = ProviderConfig(name="up", type="openai", base_url=f"http://127.0.0.1:{port}/v1")
    config = GatewayConfig(
        providers=(provider,), models=(ModelConfig(name="m", provider="up"),), keys=()
    )
    transport = build_transport(dataclasses.replace(config, upstream_transport=transport_name))
    request = httpx.Request(
        "POST",
        f"http://127.0.0.1:{port}/v1/chat/completions",
        content=b"{}",
        extensions={"timeout": {"connect": 2.0, "read": 2.0}},
    )
    try:
        response = await transport.handle_async_request(request)
        assert case.in_body, f"answered {response.status_code}"
        try:
            async for _ in response.stream:  # type: ignore[union-attr]
                pass
        finally:
            await response.aclose()
    except Exception as exc:
        return exc
    finally:
        await transport.aclose()
        if server is not None:
            server.close()
            await server.wait_closed()
    raise AssertionError("nothing was raised")


@pytest.mark.parametrize("transport", get_args(Transport))
@pytest.mark.parametrize("case", CASES)
def test_a_broken_upstream_raises_an_httpx_exception(transport: Transport, case: str) -> None:
    expected = CASES[case]
    raised = asyncio.run(asyncio.wait_for(raised_by(transport, expected), 10))

    assert type(raised) is expected.raised.get(transport, httpx.RemoteProtocolError), repr(raised)
    with pytest.raises(UpstreamError) as mapped, upstream_errors("up"):
        raise raised
    if transport in expected.raised:
        assert mapped.value.kind == expected.kind


_REQUEST_INFO: Any = SimpleNamespace(real_url="http://upstream/v1", method="POST", headers={})
_KEY: Any = SimpleNamespace(host="upstream", port=443, ssl=True, is_ssl=True)
AIOHTTP_ERRORS = [
    # The kind each had when `upstream_errors` judged aiohttp's errors itself.
    (aiohttp.ClientHttpProxyError(_REQUEST_INFO, (), status=407), "proxy"),
    (aiohttp.ClientProxyConnectionError(_KEY, OSError(111, "refused")), "proxy"),
    (aiohttp.ConnectionTimeoutError("connect"), "connect_timeout"),
    (aiohttp.SocketTimeoutError("read"), "timeout"),
    (aiohttp.ServerTimeoutError("read"), "timeout"),
    (aiohttp.ClientResponseError(_REQUEST_INFO, ()), "malformed"),
    (aiohttp.ClientConnectorError(_KEY, OSError(111, "refused")), "connect"),
    (aiohttp.ClientConnectorDNSError(_KEY, OSError(-2, "unknown")), "connect"),
    (aiohttp.ClientConnectorSSLError(_KEY, ssl.SSLError(1, "handshake")), "connect"),
    (
        aiohttp.ClientConnectorCertificateError(_KEY, ssl.SSLCertVerificationError(1, "x")),
        "connect",
    ),
    (aiohttp.ServerDisconnectedError(), "connection"),
    (aiohttp.ClientPayloadError("cut"), "connection"),
    (aiohttp.ClientOSError(104, "reset"), "connection"),
    (aiohttp.ClientConnectionResetError("reset"), "connection"),
    (aiohttp.ServerFingerprintMismatch(b"a", b"b", "upstream", 443), "connection"),
    (aiohttp.ClientConnectionError("closed"), "connection"),
    (aiohttp.InvalidURL("nope"), "transport"),
    (aiohttp.NonHttpUrlClientError("ftp://upstream"), "transport"),
    (aiohttp.ClientError("other"), "transport"),
]


@pytest.mark.parametrize(
    ("error", "kind"), AIOHTTP_ERRORS, ids=[type(e).__name__ for e, _ in AIOHTTP_ERRORS]
)
def test_each_aiohttp_error_becomes_the_httpx_one_of_its_kind(
    error: aiohttp.ClientError, kind: str
) -> None:
    # Raised by aiohttp itself (body reads), and as httpx-aiohttp maps it (requests).
    wrapped = httpx.ConnectTimeout(str(error))
    wrapped.__cause__ = error
    for raised in (error, wrapped):
        mapped = httpx_error(raised)
        assert isinstance(mapped, httpx.TransportError)
        with pytest.raises(UpstreamError) as gateway_error, upstream_errors("up"):
            raise mapped
        assert gateway_error.value.kind == kind
