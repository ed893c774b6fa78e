"""Property tests of `parse_request`, the one function every client body meets first.

Whatever the bytes, the answer is a `ClientRequest` a provider can forward or an
`InvalidRequest` (400) with a message: never another exception (which would be a 500).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.edge.requests import parse_request
from gateway.errors import InvalidRequest
from gateway.protocols import translate_request
from gateway.providers.base import Route
from gateway.relay.request import ClientRequest
from tests.hostile.strategies import (
    TOOL_CHAT,
    VALID,
    json_values,
    mutate,
    mutations,
    translated_mutations,
)

ROUTES: list[Route] = ["chat.completions", "completions", "embeddings"]
FUZZ = settings(
    max_examples=1000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def check(route: Route, raw: bytes) -> ClientRequest | InvalidRequest:
    """The contract: a forwardable request, or a 400 naming what is wrong."""
    try:
        req = parse_request(route, raw)
    except InvalidRequest as exc:
        assert exc.status == 400
        assert isinstance(exc.message, str) and exc.message
        assert exc.param is None or (isinstance(exc.param, str) and exc.param)
        error = orjson.loads(exc.json())["error"]
        assert error["type"] == "invalid_request_error" and error["message"] == exc.message
        return exc
    assert req.route == route
    assert isinstance(req.model, str) and req.model
    assert isinstance(req.stream, bool) and isinstance(req.include_usage, bool)
    assert req.stream or not req.include_usage
    assert req.max_tokens is None or (type(req.max_tokens) is int and req.max_tokens > 0)
    assert type(req.prompt_estimate) is int and req.prompt_estimate >= 1
    orjson.dumps(req.body)  # every provider re-serialises the body it forwards
    return req


@FUZZ
@given(route=st.sampled_from(ROUTES), raw=st.binary(max_size=512))
def test_any_bytes_are_a_request_or_a_400(
    route: Route, raw: bytes, fuzz_counts: Counter[str]
) -> None:
    fuzz_counts["parse_request: any bytes"] += 1
    check(route, raw)


@settings(FUZZ, max_examples=800)
@given(route=st.sampled_from(ROUTES), value=json_values)
def test_any_json_value_is_a_request_or_a_400(
    route: Route, value: Any, fuzz_counts: Counter[str]
) -> None:
    fuzz_counts["parse_request: any JSON value"] += 1
    check(route, orjson.dumps(value))


@settings(FUZZ, max_examples=900)
@given(route=st.sampled_from(ROUTES), changes=mutations)
def test_mutated_valid_bodies_are_a_request_or_a_400(
    route: Route, changes: Any, fuzz_counts: Counter[str]
) -> None:
    fuzz_counts["parse_request: mutated valid bodies"] += 1
    check(route, mutate(VALID[route], changes))


@settings(FUZZ, max_examples=700)
@given(changes=translated_mutations)
def test_anthropic_translation_of_a_valid_chat_request_is_a_body_or_a_400(
    changes: Any, fuzz_counts: Counter[str]
) -> None:
    """What the edge lets through, the Chat -> Messages translation (provider type
    anthropic's) turns into a Messages body or refuses with a 400: it never raises anything
    else (that would be a 500)."""
    fuzz_counts["anthropic messages_from_chat: mutated valid chats"] += 1
    result = check("chat.completions", mutate(TOOL_CHAT, changes))
    if isinstance(result, InvalidRequest):
        return
    try:
        out = translate_request(result.body, "chat", "messages")
    except InvalidRequest as exc:
        assert exc.status == 400 and exc.message and exc.param
        return
    assert out["messages"] is not None and type(out["max_tokens"]) is int
    kinds = {block["type"] for message in out["messages"] for block in message["content"]}
    assert not kinds & {"thinking", "redacted_thinking"}  # never from a Chat client's body
    # The provider refuses what orjson cannot write (tool arguments nested past 254 levels).
    with contextlib.suppress(orjson.JSONEncodeError):
        orjson.dumps(out)


def test_the_valid_bodies_are_valid() -> None:
    for route in ROUTES:
        assert isinstance(check(route, orjson.dumps(VALID[route])), ClientRequest)
    req = check("chat.completions", orjson.dumps(TOOL_CHAT))
    assert isinstance(req, ClientRequest)
    assert translate_request(req.body, "chat", "messages")["tools"]


def nested(depth: int, leaf: bytes = b"1") -> bytes:
    return b"[" * depth + leaf + b"]" * depth


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("depth", [200, 252, 253, 254, 300, 999, 1023, 1100])
@pytest.mark.parametrize("field", ["prompt", "input", "metadata", "messages"])
def test_deeply_nested_bodies_are_a_request_or_a_400(route: Route, depth: int, field: str) -> None:
    """orjson reads 1024 levels but writes 254, and Python's repr gives out near 1000: a
    body nested past what a provider can forward is the client's 400, not the gateway's
    500 (found by this suite: `str(prompt)` raised RecursionError, a provider's
    `orjson.dumps` raised TypeError)."""
    base = dict(VALID[route])
    base.pop(field, None)
    raw = orjson.dumps(base)[:-1] + b',"' + field.encode() + b'":' + nested(depth) + b"}"
    result = check(route, raw)
    if depth >= 254:
        assert isinstance(result, InvalidRequest)
