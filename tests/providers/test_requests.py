"""The upstream requests providers build (gateway/providers/requests.py)."""

from __future__ import annotations

import tracemalloc
from typing import Any

import httpx
import orjson
import pytest

from gateway.config import ProviderConfig, Timeouts, parse_config
from gateway.observability.metrics import Metrics
from gateway.providers import build_provider
from gateway.providers.base import UpstreamCall
from gateway.providers.requests import UpstreamRequests
from gateway.routing import Router
from gateway.transports import build_transport
from gateway.transports.native import NativeRequest
from tests.test_config import HASH


def test_a_held_request_body_takes_its_length_not_orjsons_buffer() -> None:
    # An open stream holds its upstream request (the response keeps it) for minutes;
    # orjson's `dumps` returns its bytes in a 4 KiB allocation whatever their length, which
    # was 15% of an open stream's memory. Built requests hold exactly-sized bodies.
    requests = UpstreamRequests(
        ProviderConfig(name="up", type="openai", base_url="http://up.test/v1"), Timeouts()
    )
    url = httpx.URL("http://up.test/v1/chat/completions")
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    requests.build(url, orjson.dumps(body), stream=True)  # the headers, cached once
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        held = [requests.build(url, orjson.dumps(body), stream=True) for _ in range(200)]
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    per_request = sum(d.size_diff for d in after.compare_to(before, "filename")) / len(held)
    assert held[0].read() == orjson.dumps(body)
    assert per_request < 2500, per_request


def _provider_and_calls(kind: str, transport: str) -> tuple[Any, list[UpstreamCall]]:
    """A provider of `kind` over `transport`, and a stream's and a plain call's of a model
    with timeouts of its own (as the router hands them: `call_model`)."""
    config = parse_config(
        {
            "providers": [{"name": "p", "type": kind, "base_url": "http://up.test"}],
            "models": [
                {"name": "m", "provider": "p", "timeouts": {"connect": 1.5, "first_token": 7}}
            ],
            "keys": [{"id": "k", "key_sha256": HASH}],
            "timeouts": {"connect": 4, "first_token": 40},
            "upstream_transport": transport,
        },
        "t.yaml",
        {},
    )
    provider = build_provider(config.providers[0], build_transport(config), config)
    model = Router(config, Metrics(["m"], ["p"], ["k"])).deployments("m")[0].call_model
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    calls = [
        UpstreamCall("chat.completions", body | {"stream": s}, model, s, False, "r")
        for s in (True, False)
    ]
    return provider, calls


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
@pytest.mark.parametrize("transport", ["native", "httpx"])
def test_a_models_requests_carry_its_connect_and_first_token_timeouts(
    kind: str, transport: str
) -> None:
    provider, (stream, plain) = _provider_and_calls(kind, transport)
    if kind == "openai":
        sent, answered = provider._request(stream), provider._request(plain)
    else:
        sent, answered = provider._request(stream), provider._plain_request(plain)
    if transport == "native":
        assert isinstance(sent, NativeRequest)
        assert sent.connect_timeout == 1.5
    else:  # the relay times a stream's reads; httpx only its connect
        assert sent.extensions["timeout"] == {
            "connect": 1.5,
            "read": None,
            "write": 1.5,
            "pool": 1.5,
        }
    # A plain call's reads are timed by httpx, within the model's first-token timeout.
    assert answered.extensions["timeout"] == {"connect": 1.5, "read": 7, "write": 1.5, "pool": 1.5}


def test_a_call_of_the_gateways_timeouts_keeps_the_gateways() -> None:
    requests = UpstreamRequests(
        ProviderConfig(name="up", type="openai", base_url="http://up.test/v1"),
        Timeouts(connect=4, first_token=40),
    )
    url = httpx.URL("http://up.test/v1/chat/completions")
    plain = requests.build(url, b"{}", stream=False)
    assert plain.extensions["timeout"] == {"connect": 4, "read": 40, "write": 4, "pool": 4}
    own = requests.build(url, b"{}", stream=False, timeouts=Timeouts(connect=1, first_token=2))
    assert own.extensions["timeout"] == {"connect": 1, "read": 2, "write": 1, "pool": 1}
