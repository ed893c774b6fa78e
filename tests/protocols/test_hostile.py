"""Whatever an upstream or a client sends, the translation core answers in its contract:
decoders turn garbage into an `Error` event (never an exception), encoders keep writing
valid events, request converters return a request or raise `InvalidRequest` (a 400)."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import InvalidRequest
from gateway.protocols import APIS, Api, stream_translator, translate_answer, translate_request
from gateway.protocols.events import Error
from gateway.sse import SSEDecoder
from tests.protocols.streams import encode, neutral_streams, validate

# The names the three APIs use, so that generated payloads reach the decoders' branches.
_KEYS = [
    "type", "index", "delta", "text", "partial_json", "thinking", "signature", "content_block",
    "message", "usage", "id", "model", "name", "input", "stop_reason", "error", "choices",
    "content", "tool_calls", "function", "arguments", "finish_reason", "role", "reasoning_content",
    "refusal", "output_index", "content_index", "item", "item_id", "part", "response", "call_id",
    "summary_index", "encrypted_content", "status", "output", "incomplete_details", "code",
    "input_tokens", "output_tokens", "prompt_tokens", "completion_tokens", "instructions",
    "messages", "tools", "tool_choice", "system", "max_tokens", "max_output_tokens", "reasoning",
    "tool_use_id", "source", "image_url", "url", "data", "media_type", "thinking", "stream",
]  # fmt: skip
_TYPES = [
    "message_start", "content_block_start", "content_block_delta", "content_block_stop",
    "message_delta", "message_stop", "error", "text", "tool_use", "thinking", "text_delta",
    "input_json_delta", "thinking_delta", "signature_delta", "response.created",
    "response.output_item.added", "response.output_item.done", "response.content_part.added",
    "response.content_part.done", "response.output_text.delta", "response.completed",
    "response.incomplete", "response.failed", "response.function_call_arguments.delta",
    "response.function_call_arguments.done", "response.reasoning_summary_text.delta",
    "response.reasoning_summary_part.added", "function_call", "reasoning", "output_text",
    "function", "message", "function_call_output", "input_text", "input_image", "image",
    "tool_result", "base64", "url", "auto", "any", "tool", "none", "enabled", "user", "assistant",
    "system", "developer", "tool",
]  # fmt: skip

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(_TYPES)
    | st.text(max_size=5)
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(_KEYS), inner, max_size=5)
    ),
    max_leaves=20,
)
_payloads = st.dictionaries(st.sampled_from(_KEYS), _json, max_size=6) | _json

PAIRS = list(itertools.permutations(APIS, 2))


@settings(max_examples=300, deadline=None)
@given(
    source=st.sampled_from(APIS),
    target=st.sampled_from(APIS),
    payloads=st.lists(_payloads, max_size=8),
)
def test_no_upstream_payload_breaks_a_translated_stream(
    source: Api, target: Api, payloads: list[Any]
) -> None:
    if source == target:
        return
    translator = stream_translator(source, target, include_usage=True)
    out = b""
    for payload in payloads:
        out += translator.feed(orjson.dumps(payload))
    out += translator.fail(Error(502, "the upstream's stream ended without its end"))
    assert translator.ended
    for event in SSEDecoder().feed(out):
        data = "[DONE]" if event.data == b"[DONE]" else orjson.loads(event.data)
        validate(target, event.event, data)


def _dicts(value: Any) -> list[dict[str, Any]]:
    """Every object inside `value`, itself included."""
    found: list[dict[str, Any]] = []
    if isinstance(value, dict):
        found.append(value)
        for inner in value.values():
            found.extend(_dicts(inner))
    elif isinstance(value, list):
        for inner in value:
            found.extend(_dicts(inner))
    return found


@st.composite
def mutated_streams(draw: st.DrawFn, api: Api) -> list[Any]:
    """A real stream of `api` with events dropped, repeated, swapped, or a field anywhere
    set to something else: the upstream bugs a relay meets."""
    data = encode(api, draw(neutral_streams()))
    payloads: list[Any] = [
        "[DONE]" if e.data == b"[DONE]" else orjson.loads(e.data) for e in SSEDecoder().feed(data)
    ]
    for _ in range(draw(st.integers(1, 4))):
        if not payloads:
            break
        at = draw(st.integers(0, len(payloads) - 1))
        how = draw(st.sampled_from(["drop", "repeat", "swap", "field"]))
        if how == "drop":
            del payloads[at]
        elif how == "repeat":
            payloads.insert(at, payloads[at])
        elif how == "swap":
            other = draw(st.integers(0, len(payloads) - 1))
            payloads[at], payloads[other] = payloads[other], payloads[at]
        else:
            targets = _dicts(payloads[at])
            if targets:
                target = draw(st.sampled_from(targets))
                keys = st.sampled_from(sorted(target)) if target else st.nothing()
                key = draw(keys | st.sampled_from(_KEYS))
                target[key] = draw(_json)
    return payloads


@settings(max_examples=300, deadline=None)
@given(data=st.data(), source=st.sampled_from(APIS), target=st.sampled_from(APIS))
def test_a_broken_upstream_stream_still_gives_the_client_valid_events(
    data: st.DataObject, source: Api, target: Api
) -> None:
    if source == target:
        return
    payloads = data.draw(mutated_streams(source))
    translator = stream_translator(source, target, include_usage=True)
    out = b""
    for payload in payloads:
        out += translator.feed(b"[DONE]" if payload == "[DONE]" else orjson.dumps(payload))
    out += translator.fail(Error(502, "the upstream's stream ended without its end"))
    for event in SSEDecoder().feed(out):
        payload = "[DONE]" if event.data == b"[DONE]" else orjson.loads(event.data)
        validate(target, event.event, payload)


@settings(max_examples=300, deadline=None)
@given(
    client=st.sampled_from(APIS),
    upstream=st.sampled_from(APIS),
    body=st.dictionaries(st.sampled_from(_KEYS), _json, max_size=8),
)
def test_no_client_body_is_anything_but_a_request_or_a_400(
    client: Api, upstream: Api, body: dict[str, Any]
) -> None:
    try:
        translated = translate_request(body, client, upstream)
    except InvalidRequest as error:
        assert error.status == 400 and error.param
        return
    orjson.dumps(translated)  # what goes upstream is JSON


@settings(max_examples=300, deadline=None)
@given(upstream=st.sampled_from(APIS), client=st.sampled_from(APIS), body=_payloads)
def test_no_upstream_answer_breaks_its_translation(upstream: Api, client: Api, body: Any) -> None:
    orjson.dumps(translate_answer(upstream, client, body))
