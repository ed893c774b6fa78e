"""An upstream answer's headers reach the router: a stream's, a plain answer's, and an
error's `retry-after`, from an OpenAI-compatible and an Anthropic upstream, in each API a
client may speak (over a real socket, the fake provider in this process)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest

from gateway.config import GatewayConfig, parse_config
from gateway.errors import UpstreamError, UpstreamRejected
from gateway.protocols import Api
from gateway.providers import build_provider
from gateway.providers.base import UpstreamCall
from gateway.transports import build_transport
from tests.support.fake_upstream import FakeUpstream
from tests.test_config import HASH


def config_for(url: str, kind: str = "openai") -> GatewayConfig:
    return parse_config(
        {
            "providers": [{"name": "p", "type": kind, "base_url": url + "/v1"}],
            "models": [{"name": "m", "provider": "p", "upstream_model": "text?n=2"}],
            "keys": [{"id": "k", "key_sha256": HASH}],
        },
        "t.yaml",
        {},
    )


BODIES: dict[Api, dict[str, object]] = {
    "chat": {"messages": [{"role": "user", "content": "hi"}]},
    "messages": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 20},
    "responses": {"input": "hi"},
}


async def call(
    upstream: FakeUpstream, stream: bool, kind: str = "openai", api: Api = "chat"
) -> Mapping[str, str] | None:
    config = config_for(upstream.url, kind)
    transport = build_transport(config)
    provider = build_provider(config.providers[0], transport, config)
    model = config.model("m")
    assert model is not None
    request = UpstreamCall(
        route="chat.completions",
        body=BODIES[api] | {"stream": stream},
        model=model,
        stream=stream,
        include_usage=False,
        request_id="r",
        api=api,
    )
    try:
        if stream:
            opened = await provider.open_stream(request)
            headers = opened.state.upstream_headers
            await opened.aclose()
        else:
            headers = (await provider.complete(request)).upstream_headers
        return headers
    finally:
        await transport.aclose()


@pytest.mark.parametrize(
    ("kind", "api"),
    [
        ("openai", "chat"),
        ("openai", "messages"),
        ("anthropic", "chat"),
        ("anthropic", "messages"),
        ("anthropic", "responses"),
    ],
)
@pytest.mark.parametrize("stream", [True, False])
def test_an_answers_headers_are_kept(stream: bool, kind: str, api: Api) -> None:
    with FakeUpstream() as upstream:
        headers = asyncio.run(call(upstream, stream, kind, api))
    assert headers is not None
    expected = "text/event-stream" if stream else "application/json"
    assert headers["content-type"] == expected


@pytest.mark.parametrize(("status", "error"), [(429, UpstreamRejected), (503, UpstreamError)])
@pytest.mark.parametrize("stream", [True, False])
def test_an_errors_retry_after_rides_on_it(
    status: int, error: type[Exception], stream: bool
) -> None:
    with FakeUpstream() as upstream:
        upstream.fail_next, upstream.fail_status, upstream.retry_after = 1, status, "7"
        with pytest.raises(error) as info:
            asyncio.run(call(upstream, stream))
    assert getattr(info.value, "upstream_headers", None) == {"retry-after": "7"}
