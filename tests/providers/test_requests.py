"""The upstream requests providers build (gateway/providers/requests.py)."""

from __future__ import annotations

import tracemalloc

import httpx
import orjson

from gateway.config import ProviderConfig, Timeouts
from gateway.providers.requests import UpstreamRequests


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
