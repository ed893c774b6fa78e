"""AnthropicProvider: the Messages API seen through OpenAI's chat.completions interface.

The upstream is respx answering with the exact event sequences Anthropic streams; what the
provider emits is parsed back as SSE and checked with the official openai SDK's types.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import respx
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from gateway.config import ModelConfig, ProviderConfig, Timeouts
from gateway.errors import GatewayError, InvalidRequest, UpstreamError, UpstreamRejected
from gateway.protocols import translate_request
from gateway.protocols.request_parts import PIVOT_REASONING
from gateway.providers.anthropic import AnthropicProvider, AnthropicStream
from gateway.providers.base import Completion, UpstreamCall

BASE_URL = "https://api.anthropic.test"
MESSAGES_URL = BASE_URL + "/v1/messages"
SECRET = "sk-ant-api03-very-secret-key"
MODEL = ModelConfig(name="claude-haiku", provider="anthropic", upstream_model="claude-3-5-haiku")


def sse(event: str, data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data)
    return f"event: {event}\ndata: {payload}\n\n".encode()


def message_start(usage: dict[str, Any] | None = None) -> bytes:
    return sse(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": "claude-3-5-haiku-20241022",
                "stop_reason": None,
                "stop_sequence": None,
                "usage": usage or {"input_tokens": 25, "output_tokens": 1},
            },
        },
    )


def text_start(index: int) -> bytes:
    return sse(
        "content_block_start",
        {
            "type": "content_block_start",
            "index": index,
            "content_block": {"type": "text", "text": ""},
        },
    )


def text_delta(index: int, text: str) -> bytes:
    return sse(
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": index,
            "delta": {"type": "text_delta", "text": text},
        },
    )


def tool_start(index: int, tool_id: str, name: str) -> bytes:
    block = {"type": "tool_use", "id": tool_id, "name": name, "input": {}}
    return sse(
        "content_block_start",
        {"type": "content_block_start", "index": index, "content_block": block},
    )


def json_delta(index: int, partial: str) -> bytes:
    delta = {"type": "input_json_delta", "partial_json": partial}
    return sse(
        "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
    )


def block_stop(index: int) -> bytes:
    return sse("content_block_stop", {"type": "content_block_stop", "index": index})


PING = sse("ping", {"type": "ping"})
MESSAGE_STOP = sse("message_stop", {"type": "message_stop"})


def message_delta(stop_reason: str | None, output_tokens: int = 15) -> bytes:
    return sse(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": output_tokens},
        },
    )


def text_stream(stop_reason: str | None = "end_turn", **start: Any) -> bytes:
    """A real Anthropic text stream, event for event."""
    return b"".join(
        [
            message_start(**start),
            text_start(0),
            PING,
            text_delta(0, "Hello"),
            text_delta(0, ", wor"),
            text_delta(0, "ld!"),
            block_stop(0),
            message_delta(stop_reason),
            MESSAGE_STOP,
        ]
    )


WEATHER_INPUT = {"location": "San Francisco, CA", "unit": "fahrenheit"}
TIME_INPUT = {"timezone": "America/Los_Angeles"}


def tool_stream() -> bytes:
    """Text, then two tool_use blocks whose input arrives in pieces (the first one empty)."""
    return b"".join(
        [
            message_start(),
            text_start(0),
            PING,
            text_delta(0, "Okay, let me check"),
            text_delta(0, " the weather."),
            block_stop(0),
            tool_start(1, "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather"),
            json_delta(1, ""),
            json_delta(1, '{"location": "San Fra'),
            json_delta(1, 'ncisco, CA", "unit"'),
            json_delta(1, ': "fahrenheit"}'),
            block_stop(1),
            tool_start(2, "toolu_02Abc", "get_time"),
            json_delta(2, '{"timezone": '),
            json_delta(2, '"America/Los_Angeles"}'),
            block_stop(2),
            message_delta("tool_use", 89),
            MESSAGE_STOP,
        ]
    )


def make_call(
    body: dict[str, Any] | None = None,
    *,
    stream: bool = True,
    include_usage: bool = False,
    route: Any = "chat.completions",
) -> UpstreamCall:
    return UpstreamCall(
        route=route,
        body=body or {"model": "claude-haiku", "messages": [{"role": "user", "content": "Hi"}]},
        model=MODEL,
        stream=stream,
        include_usage=include_usage,
        request_id="req-1",
    )


def provider_for(transport: httpx.AsyncBaseTransport, **kwargs: Any) -> AnthropicProvider:
    config = ProviderConfig(name="anthropic", type="anthropic", base_url=BASE_URL, api_key=SECRET)
    return AnthropicProvider(config, transport, Timeouts(), **kwargs)


async def pieces(body: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def sse_response(body: bytes, *, size: int | None = None) -> httpx.Response:
    content: Any = body if size is None else pieces(body, size)
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=content)


class Relayed:
    """What one stream emitted, and how it ended."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.error: GatewayError | None = None
        self.stream: AnthropicStream | None = None
        self.request: httpx.Request | None = None

    @property
    def events(self) -> list[bytes]:
        """The emitted SSE events' data, each checked to be a whole `data:` event."""
        raw = b"".join(self.writes)
        assert raw.endswith(b"\n\n")
        events = raw[:-2].split(b"\n\n")
        assert all(event.startswith(b"data: ") for event in events)
        return [event[6:] for event in events]

    @property
    def chunks(self) -> list[dict[str, Any]]:
        """The chat.completion.chunk objects, each validated by the openai SDK's type."""
        out = []
        for data in self.events:
            if data == b"[DONE]":
                continue
            ChatCompletionChunk.model_validate_json(data)
            out.append(orjson.loads(data))
        return out

    @property
    def deltas(self) -> list[dict[str, Any]]:
        return [chunk["choices"][0]["delta"] for chunk in self.chunks if chunk["choices"]]


def relay(
    upstream: httpx.Response | Exception,
    call: UpstreamCall | None = None,
    **provider_kwargs: Any,
) -> Relayed:
    relayed = Relayed()

    async def run() -> None:
        with respx.mock(assert_all_called=False) as router:
            route = router.post(MESSAGES_URL)
            if isinstance(upstream, Exception):
                route.mock(side_effect=upstream)
            else:
                route.mock(return_value=upstream)
            async with httpx.AsyncHTTPTransport() as transport:
                provider = provider_for(transport, **provider_kwargs)
                try:
                    stream = await provider.open_stream(call or make_call())
                except GatewayError as exc:
                    relayed.error = exc
                else:
                    relayed.stream = stream
                    try:
                        async for write in stream:
                            assert write, "never an empty write"
                            relayed.writes.append(write)
                    except GatewayError as exc:
                        relayed.error = exc
                    finally:
                        await stream.aclose()
            if route.calls:
                relayed.request = route.calls.last.request

    asyncio.run(run())
    return relayed


def sent_body(relayed: Relayed) -> dict[str, Any]:
    assert relayed.request is not None
    body: dict[str, Any] = orjson.loads(relayed.request.content)
    return body


# --- streams ------------------------------------------------------------------------------


def test_text_stream_becomes_openai_chunks_in_order() -> None:
    relayed = relay(sse_response(text_stream()))

    assert relayed.error is None
    assert relayed.events[-1] == b"[DONE]"
    chunks = relayed.chunks
    assert {chunk["id"] for chunk in chunks} == {"chatcmpl-msg_01XFDUDYJgAACzvnptvVoYEL"}
    assert {chunk["model"] for chunk in chunks} == {"claude-3-5-haiku-20241022"}
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk["created"] for chunk in chunks}) == 1
    assert relayed.deltas[0] == {"role": "assistant", "content": ""}
    assert "".join(d.get("content") or "" for d in relayed.deltas) == "Hello, world!"
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 4 + ["stop"]
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert all(c["choices"][0]["logprobs"] is None for c in chunks)

    assert relayed.stream is not None
    state = relayed.stream.state
    assert state.finished and state.done_sent
    assert state.usage is not None
    assert (state.usage.prompt_tokens, state.usage.completion_tokens) == (25, 15)
    assert state.completion_estimate == 3
    assert state.text == []  # only kept when asked


def test_each_upstream_event_is_relayed_when_its_read_completes() -> None:
    whole = relay(sse_response(text_stream()))
    trickled = relay(sse_response(text_stream(), size=7))

    # Same events, byte for byte except `created`, however the upstream reads were cut.
    def strip(events: list[bytes]) -> list[Any]:
        return [e if e == b"[DONE]" else {**orjson.loads(e), "created": 0} for e in events]

    assert strip(trickled.events) == strip(whole.events)
    assert len(trickled.writes) > 1


def test_usage_chunk_is_sent_only_when_the_client_asked() -> None:
    usage = {
        "input_tokens": 10,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 1000,
        "output_tokens": 1,
    }
    asked = relay(sse_response(text_stream(usage=usage)), make_call(include_usage=True))
    not_asked = relay(sse_response(text_stream(usage=usage)), make_call(include_usage=False))

    assert asked.events[-1] == b"[DONE]"
    usage_chunk = asked.chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {
        "prompt_tokens": 1110,
        "completion_tokens": 15,
        "total_tokens": 1125,
    }
    assert all(chunk["choices"] for chunk in not_asked.chunks)
    assert not_asked.events[-1] == b"[DONE]"
    assert not_asked.stream is not None and not_asked.stream.state.usage is not None
    assert not_asked.stream.state.usage.prompt_tokens == 1110  # metered either way


def test_tool_use_blocks_become_openai_tool_call_deltas() -> None:
    relayed = relay(sse_response(tool_stream()))

    assert relayed.error is None
    deltas = relayed.deltas
    text = "".join(d.get("content") or "" for d in deltas)
    assert text == "Okay, let me check the weather."
    calls = [call for d in deltas for call in d.get("tool_calls", [])]
    starts = [call for call in calls if "id" in call]
    assert starts == [
        {
            "index": 0,
            "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
            "type": "function",
            "function": {"name": "get_weather", "arguments": ""},
        },
        {
            "index": 1,
            "id": "toolu_02Abc",
            "type": "function",
            "function": {"name": "get_time", "arguments": ""},
        },
    ]
    arguments: dict[int, str] = {}
    for call in calls:
        arguments[call["index"]] = arguments.get(call["index"], "") + call["function"]["arguments"]
    assert json.loads(arguments[0]) == WEATHER_INPUT
    assert json.loads(arguments[1]) == TIME_INPUT
    assert relayed.chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert relayed.events[-1] == b"[DONE]"
    assert relayed.stream is not None
    assert relayed.stream.state.completion_estimate == 2 + 3 + 2  # the empty piece is dropped


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("a_reason_added_later", "stop"),
    ],
)
def test_stop_reason_maps_to_openai_finish_reason(stop_reason: str, finish_reason: str) -> None:
    relayed = relay(sse_response(text_stream(stop_reason)))
    finishes = [c["choices"][0]["finish_reason"] for c in relayed.chunks]
    assert finishes[-1] == finish_reason
    assert finishes.count(finish_reason) == 1
    assert relayed.stream is not None and relayed.stream.state.finished


def test_error_event_mid_stream_follows_what_came_before() -> None:
    overloaded = sse(
        "error",
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    )
    body = message_start() + text_start(0) + text_delta(0, "Hel") + overloaded
    for size in (None, 11):  # in the same read as the events before it, and on its own
        relayed = relay(sse_response(body, size=size))

        assert "".join(d.get("content") or "" for d in relayed.deltas) == "Hel"
        assert b"[DONE]" not in relayed.events
        assert isinstance(relayed.error, UpstreamError)
        assert relayed.error.kind == "error_event"
        assert "overloaded_error" in relayed.error.message
        assert "Overloaded" in relayed.error.message
        assert relayed.stream is not None
        assert not relayed.stream.state.finished and not relayed.stream.state.done_sent


def test_event_that_is_not_json_is_malformed() -> None:
    body = message_start() + b"event: content_block_delta\ndata: {not json\n\n"
    relayed = relay(sse_response(body))

    assert relayed.deltas == [{"role": "assistant", "content": ""}]
    assert isinstance(relayed.error, UpstreamError)
    assert relayed.error.kind == "malformed"


def test_stream_cut_short_is_charged_what_it_relayed() -> None:
    body = message_start() + text_start(0) + text_delta(0, "a") + text_delta(0, "b")
    relayed = relay(sse_response(body))

    assert relayed.error is None
    assert b"[DONE]" not in relayed.events
    assert relayed.stream is not None
    state = relayed.stream.state
    assert not state.finished and not state.done_sent
    assert state.usage is not None
    assert (state.usage.prompt_tokens, state.usage.completion_tokens) == (25, 2)


def test_thinking_pings_and_unknown_events_are_dropped() -> None:
    thinking = {"type": "thinking", "thinking": "", "signature": ""}
    body = b"".join(
        [
            message_start(),
            sse(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": thinking},
            ),
            sse(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "thinking_delta", "thinking": "Let me think"},
                },
            ),
            sse(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "signature_delta", "signature": "EqQBCgIYAh"},
                },
            ),
            block_stop(0),
            PING,
            b": a comment\n\n",
            sse("brand_new_event", {"type": "brand_new_event", "x": 1}),
            text_start(1),
            text_delta(1, "42"),
            block_stop(1),
            message_delta("end_turn"),
            MESSAGE_STOP,
        ]
    )
    relayed = relay(sse_response(body), keep_text=True)

    assert relayed.error is None
    assert relayed.deltas == [{"role": "assistant", "content": ""}, {"content": "42"}, {}]
    assert relayed.stream is not None and relayed.stream.state.text == ["42"]


def test_request_sent_upstream_is_an_anthropic_messages_request() -> None:
    body = {
        "model": "claude-haiku",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
            {"role": "user", "content": "Weather and time in SF?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": json.dumps(WEATHER_INPUT)},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": json.dumps(TIME_INPUT)},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "64F, sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": "9:41"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather at a place",
                    "parameters": {
                        "type": "object",
                        "properties": {"location": {"type": "string"}},
                    },
                },
            },
            {"type": "function", "function": {"name": "get_time"}},
        ],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "stream": True,
        "stream_options": {"include_usage": True},
        "presence_penalty": 0,
        "temperature": 1.5,
        "stop": "END",
        "user": "user-42",
    }
    relayed = relay(sse_response(text_stream()), make_call(body))

    request = relayed.request
    assert request is not None
    assert str(request.url) == MESSAGES_URL
    assert request.headers["x-api-key"] == SECRET
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["accept"] == "text/event-stream"
    assert "authorization" not in request.headers
    assert sent_body(relayed) == {
        "model": "claude-3-5-haiku",
        "max_tokens": 4096,
        "system": "You are terse.\n\nAnswer in English.",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Weather and time in SF?"}]},
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "call_1",
                        "name": "get_weather",
                        "input": WEATHER_INPUT,
                    },
                    {"type": "tool_use", "id": "call_2", "name": "get_time", "input": TIME_INPUT},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "64F, sunny"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": "9:41"},
                ],
            },
        ],
        "tools": [
            {
                "name": "get_weather",
                "description": "Weather at a place",
                "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}},
            },
            {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
        ],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "temperature": 1,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "user-42"},
        "stream": True,
    }
    assert body["temperature"] == 1.5  # the client's body is left as it was


def test_routes_anthropic_does_not_serve_are_refused_before_any_call() -> None:
    for route in ("completions", "embeddings"):
        relayed = relay(sse_response(text_stream()), make_call(route=route))
        assert isinstance(relayed.error, InvalidRequest)
        assert relayed.error.status == 400
        assert "anthropic" in relayed.error.message
        assert "/v1/" + route in relayed.error.message
        assert relayed.request is None


# --- request translation ------------------------------------------------------------------


def translate(**body: Any) -> dict[str, Any]:
    """What a Chat client's body becomes for provider type anthropic."""
    body.setdefault("messages", [{"role": "user", "content": "Hi"}])
    return translate_request(body, "chat", "messages")


def test_max_tokens_prefers_max_completion_tokens() -> None:
    assert translate()["max_tokens"] == 4096
    assert translate(max_tokens=100)["max_tokens"] == 100
    assert translate(max_tokens=100, max_completion_tokens=50)["max_tokens"] == 50


def test_tool_choice_maps_to_anthropic_tool_choice() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    cases = {
        "auto": {"type": "auto"},
        "required": {"type": "any"},
        "none": {"type": "none"},
    }
    for choice, expected in cases.items():
        assert translate(tools=tools, tool_choice=choice)["tool_choice"] == expected
    named = {"type": "function", "function": {"name": "f"}}
    assert translate(tools=tools, tool_choice=named)["tool_choice"] == {"type": "tool", "name": "f"}
    assert translate(tools=tools, parallel_tool_calls=False)["tool_choice"] == {
        "type": "auto",
        "disable_parallel_tool_use": True,
    }
    assert "tool_choice" not in translate(tool_choice="auto")  # no tools, nothing to choose


def test_images_become_base64_or_url_blocks() -> None:
    content = [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.test/cat.jpg"}},
    ]
    body = translate(messages=[{"role": "user", "content": content}])
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "What is in these?"},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.test/cat.jpg"}},
    ]


def test_consecutive_same_role_messages_are_merged() -> None:
    body = translate(
        messages=[
            {"role": "user", "content": "one"},
            {"role": "user", "content": "two"},
            {"role": "assistant", "content": "three"},
            {"role": "tool", "tool_call_id": "t1", "content": "four"},
            {"role": "user", "content": "five"},
        ]
    )
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert [b["type"] for b in body["messages"][2]["content"]] == ["tool_result", "text"]
    assert "system" not in body


TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"n": 2}, "n"),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "c",
                                "type": "function",
                                "function": {"name": "f", "arguments": "{oops"},
                            }
                        ],
                    }
                ]
            },
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "messages[0].content[0].type",
        ),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
        (
            {
                "tool_choice": "sometimes",
                "tools": [{"type": "function", "function": {"name": "f"}}],
            },
            "tool_choice",
        ),
        # One translator serves Chat clients and the pivot alike (`gateway.protocols`); from
        # here, the cases the provider's own translator, before the merge, dropped silently
        # or did otherwise.
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": -1}, "frequency_penalty"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"logprobs": True, "top_logprobs": 2}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format",
        ),
        ({"verbosity": "low"}, "verbosity"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"reasoning_effort": 3}, "reasoning_effort"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "description": 7}}]},
            "tools[0].function.description",
        ),
        (
            {"messages": [{"role": "assistant", "content": "x", "tool_calls": 5}]},
            "messages[0].tool_calls",
        ),
        (
            {"messages": [{"role": "system", "content": [{"type": "refusal", "refusal": "x"}]}]},
            "messages[0].content[0].type",
        ),
    ],
)
def test_requests_anthropic_cannot_honour_are_refused(body: dict[str, Any], param: str) -> None:
    """SPEC 9: a 400 naming the field, never a silent drop."""
    with pytest.raises(InvalidRequest) as caught:
        translate(**body)
    assert caught.value.status == 400
    assert caught.value.param == param


def test_default_values_that_change_nothing_are_not_refused() -> None:
    plain = translate()
    defaults = translate(
        n=1,
        presence_penalty=0,
        frequency_penalty=0.0,
        logit_bias={},
        logprobs=False,
        top_logprobs=0,
        response_format={"type": "text"},
        verbosity="medium",
        modalities=["text"],
        parallel_tool_calls=True,
        tool_choice="auto",
        reasoning_effort="none",
        # No Anthropic equivalent and no effect on the answer: dropped, as documented.
        seed=7,
        store=False,
        metadata={"app": "x"},
        service_tier="auto",
        stream_options={"include_usage": True},
        prompt_cache_key="k",
    )
    assert defaults == plain
    assert "tool_choice" not in translate(tool_choice="none")  # no tools: nothing to choose
    assert "tool_choice" not in translate(parallel_tool_calls=False)


def test_reasoning_effort_becomes_a_thinking_budget_inside_max_tokens() -> None:
    low = translate(reasoning_effort="low")  # the provider used to drop it
    assert low["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert low["max_tokens"] == 4096 + 2048  # no limit given: the answer keeps its default
    given = translate(reasoning_effort="medium", max_completion_tokens=10000)
    assert given["thinking"] == {"type": "enabled", "budget_tokens": 8192}
    assert given["max_tokens"] == 10000
    with pytest.raises(InvalidRequest) as caught:
        translate(reasoning_effort="medium", max_tokens=8192)
    assert caught.value.param == "reasoning_effort"
    assert "8192" in caught.value.message


def test_a_tool_loop_a_chat_client_continues_goes_without_thinking() -> None:
    """Chat cannot hand Anthropic's thinking back, and Anthropic refuses thinking on a
    request whose tool-use turn lacks it: the continuation goes without (no 400)."""
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    loop = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    body = translate(messages=loop, tools=TOOLS, reasoning_effort="high")
    assert "thinking" not in body
    assert body["max_tokens"] == 4096 + 24576  # as the loop's first request had
    done = [*loop, {"role": "assistant", "content": "Sunny."}, {"role": "user", "content": "Ok"}]
    after = translate(messages=done, tools=TOOLS, reasoning_effort="high")
    assert after["thinking"] == {"type": "enabled", "budget_tokens": 24576}


def test_the_pivots_reasoning_key_in_a_chat_body_is_nobodys() -> None:
    """A Chat client cannot make thinking blocks (or a crash) out of the gateway's own key."""
    for forged in ([1], "x", [{"text": "t", "signature": "s"}]):
        body = translate(
            messages=[
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello", PIVOT_REASONING: forged},
                {"role": "user", "content": "Bye"},
            ]
        )
        assert body["messages"][1]["content"] == [{"type": "text", "text": "Hello"}]


def test_content_parts_become_blocks_anthropic_accepts() -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.test/a.png"}}
    body = translate(
        messages=[
            {"role": "system", "content": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}]},
            {"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "x"}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "see"}, image]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c2", "type": "function", "function": {"name": "f", "arguments": ""}}
            ]},
            {"role": "tool", "tool_call_id": "c2", "content": ""},
        ]
    )  # fmt: skip
    assert body["system"] == "A\n\nB"  # each part a paragraph, as each system message is
    assert body["messages"][0]["content"] == [{"type": "text", "text": "x"}]  # no empty block
    assert body["messages"][2]["content"] == [
        {
            "type": "tool_result",
            "tool_use_id": "c1",
            "content": [
                {"type": "text", "text": "see"},
                {"type": "image", "source": {"type": "url", "url": "https://example.test/a.png"}},
            ],
        }
    ]
    assert body["messages"][4]["content"] == [{"type": "tool_result", "tool_use_id": "c2"}]


# --- not streaming ------------------------------------------------------------------------


ANTHROPIC_MESSAGE = {
    "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
    "type": "message",
    "role": "assistant",
    "model": "claude-3-5-haiku-20241022",
    "content": [
        {"type": "text", "text": "Let me look that up."},
        {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": WEATHER_INPUT},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {"input_tokens": 472, "cache_read_input_tokens": 8, "output_tokens": 91},
}


def complete(
    upstream: httpx.Response | Exception,
) -> tuple[Completion | GatewayError, httpx.Request]:
    async def run() -> tuple[Completion | GatewayError, httpx.Request]:
        with respx.mock(assert_all_called=False) as router:
            route = router.post(MESSAGES_URL)
            if isinstance(upstream, Exception):
                route.mock(side_effect=upstream)
            else:
                route.mock(return_value=upstream)
            async with httpx.AsyncHTTPTransport() as transport:
                try:
                    result: Completion | GatewayError = await provider_for(transport).complete(
                        make_call(stream=False)
                    )
                except GatewayError as exc:
                    result = exc
            return result, route.calls.last.request

    return asyncio.run(run())


def test_non_streaming_answer_becomes_a_chat_completion() -> None:
    result, request = complete(httpx.Response(200, json=ANTHROPIC_MESSAGE))

    assert isinstance(result, Completion)
    completion = ChatCompletion.model_validate_json(result.body)
    assert completion.id == "chatcmpl-msg_013Zva2CMHLNnXjNJJKqJ2EF"
    assert completion.model == "claude-3-5-haiku-20241022"
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me look that up."
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.id == "toolu_01A"
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == WEATHER_INPUT  # type: ignore[union-attr]
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (480, 91)
    assert completion.usage.total_tokens == 571
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (480, 91)

    assert orjson.loads(request.content)["stream"] is False
    assert request.headers["x-api-key"] == SECRET
    assert "text/event-stream" not in request.headers.get("accept", "")


def test_non_streaming_text_only_answer_has_no_tool_calls() -> None:
    message = {
        **ANTHROPIC_MESSAGE,
        "content": [{"type": "text", "text": "Hi!"}],
        "stop_reason": "end_turn",
    }
    result, _ = complete(httpx.Response(200, json=message))

    assert isinstance(result, Completion)
    body = orjson.loads(result.body)
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hi!"}
    assert body["choices"][0]["finish_reason"] == "stop"


def test_non_streaming_answer_that_is_not_json_is_malformed() -> None:
    result, _ = complete(httpx.Response(200, content=b"<html>oops</html>"))
    assert isinstance(result, UpstreamError)
    assert result.kind == "malformed"


# --- upstream errors ----------------------------------------------------------------------


def anthropic_error(status: int, kind: str, message: str) -> httpx.Response:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return httpx.Response(status, json=body)


ERROR_CASES = [
    (
        400,
        "invalid_request_error",
        "max_tokens: 99999999 > 8192, the maximum",
        UpstreamRejected,
        400,
    ),
    (401, "authentication_error", "invalid x-api-key", UpstreamError, 502),
    (429, "rate_limit_error", "Number of request tokens has exceeded", UpstreamRejected, 429),
    (500, "api_error", "Internal server error", UpstreamError, 502),
    (529, "overloaded_error", "Overloaded", UpstreamError, 503),
]


@pytest.mark.parametrize(("status", "kind", "message", "error_class", "client_status"), ERROR_CASES)
@pytest.mark.parametrize("streaming", [True, False])
def test_upstream_error_answers_map_to_gateway_errors(
    streaming: bool,
    status: int,
    kind: str,
    message: str,
    error_class: type[GatewayError],
    client_status: int,
) -> None:
    upstream = anthropic_error(status, kind, message)
    if streaming:
        error: Any = relay(upstream).error
    else:
        error, _ = complete(upstream)

    assert type(error) is error_class
    assert error.status == client_status
    assert SECRET not in str(error) and SECRET.encode() not in error.json()
    client_body = orjson.loads(error.json())
    assert set(client_body["error"]) >= {"message", "type", "param", "code"}
    if status == 401:
        assert isinstance(error, UpstreamError) and error.kind == "auth"
        assert client_body["error"]["type"] == "api_error"  # the gateway's fault, not the client's
    if status in (400, 429):
        assert client_body["error"]["message"] == message  # Anthropic's own words, OpenAI-shaped
        assert client_body["error"]["type"] == kind
    if status == 429:
        assert error.headers["retry-after"]
    if status >= 500:
        assert isinstance(error, UpstreamError) and error.retryable


def test_a_200_that_is_not_a_stream_is_malformed() -> None:
    relayed = relay(httpx.Response(200, json=ANTHROPIC_MESSAGE))
    assert isinstance(relayed.error, UpstreamError)
    assert relayed.error.kind == "malformed"


def test_unreachable_upstream_is_retryable_and_names_no_secret() -> None:
    relayed = relay(httpx.ConnectError(f"cannot reach {BASE_URL} with key {SECRET}"))
    assert isinstance(relayed.error, UpstreamError)
    assert relayed.error.retryable
    assert SECRET not in str(relayed.error) and SECRET.encode() not in relayed.error.json()
