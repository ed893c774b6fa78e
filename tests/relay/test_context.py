"""`RelayContext.call_for` builds the attempt's `UpstreamCall` positionally (cheaper than by
keyword): every field must land where the keyword call would put it."""

from __future__ import annotations

from dataclasses import fields

from gateway.config import ModelConfig
from gateway.observability.records import RequestRecord
from gateway.providers.base import UpstreamCall
from gateway.relay.request import ClientRequest
from gateway.relay.stream import RelayContext


def test_call_for_sets_each_field_as_by_keyword() -> None:
    req = ClientRequest(
        route="chat.completions",
        body={"model": "m", "stream": True},
        model="m",
        stream=False,  # unlike include_usage, so that a swap shows
        include_usage=True,
        max_tokens=7,
        prompt_estimate=3,
        api="messages",
        passed_headers=(("anthropic-version", "2023-06-01"),),
    )
    ctx = RelayContext(req, [], "req-1", RequestRecord("req-1", "chat.completions"), [], 0.0)
    model = ModelConfig(name="fallback", provider="p", upstream_model="up")
    by_keyword = UpstreamCall(
        route=req.route,
        body=req.body,
        model=model,
        stream=req.stream,
        include_usage=req.include_usage,
        request_id="req-1",
        api=req.api,
        passed_headers=req.passed_headers,
    )
    call = ctx.call_for(model)
    assert [getattr(call, f.name) for f in fields(UpstreamCall)] == [
        getattr(by_keyword, f.name) for f in fields(UpstreamCall)
    ]
    assert call.api == "messages" and call.include_usage and call.traceparent == ""
