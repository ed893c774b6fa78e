"""Non-streamed answers and error bodies, translated between the APIs and validated against
the SDKs' models; a streamed answer and its non-streamed twin say the same."""

from __future__ import annotations

import itertools
from typing import Any

import anthropic.types
import openai.types.chat
import openai.types.responses
import orjson
import pytest
from hypothesis import given, settings

from gateway.protocols import (
    APIS,
    Api,
    answer_from_message,
    message_from_answer,
    translate_answer,
    translate_error,
)
from gateway.protocols.errors import anthropic_error_body, error_from_anthropic, error_from_openai
from gateway.protocols.events import Block, Error, Event
from tests.protocols.streams import comparable, json_argument_streams, reassemble

ANTHROPIC_ANSWER = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-x",
    "content": [
        {"type": "thinking", "thinking": "Weather first.", "signature": "sig"},
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 3,
        "cache_read_input_tokens": 10,
        "cache_creation_input_tokens": 2,
        "output_tokens": 9,
    },
}


def validate(api: Api, body: dict[str, Any]) -> Any:
    if api == "chat":
        return openai.types.chat.ChatCompletion.model_validate(body)
    if api == "responses":
        return openai.types.responses.Response.model_validate(body)
    return anthropic.types.Message.model_validate(body)


def test_an_anthropic_answer_as_a_chat_completion() -> None:
    body = translate_answer("messages", "chat", ANTHROPIC_ANSWER)
    completion = validate("chat", body)
    choice = completion.choices[0]
    assert choice.message.content == "Let me check."
    assert choice.message.tool_calls[0].id == "toolu_1"
    assert choice.message.tool_calls[0].function.arguments == '{"city":"Paris"}'
    assert choice.finish_reason == "tool_calls"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (15, 9)
    assert completion.usage.prompt_tokens_details.cached_tokens == 10


def test_an_anthropic_answer_as_a_response() -> None:
    request = {
        "model": "claude-x",
        "input": "hi",
        "tools": [{"type": "function", "name": "weather", "parameters": {"type": "object"}}],
    }
    response = validate(
        "responses", translate_answer("messages", "responses", ANTHROPIC_ANSWER, request)
    )
    assert response.status == "completed"
    assert [item.type for item in response.output] == ["reasoning", "message", "function_call"]
    assert response.output[0].encrypted_content == "sig"
    assert response.output_text == "Let me check."
    assert response.output[2].arguments == '{"city":"Paris"}'
    assert response.tools[0].name == "weather"  # a Response repeats its request's tools
    assert response.usage.input_tokens == 15 and response.usage.total_tokens == 24


def test_a_length_cut_response_is_incomplete_with_max_output_tokens() -> None:
    answer = {
        **ANTHROPIC_ANSWER,
        "stop_reason": "max_tokens",
        "content": [{"type": "text", "text": "Par"}],
    }
    response = validate("responses", translate_answer("messages", "responses", answer))
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    chat = validate("chat", translate_answer("messages", "chat", answer))
    assert chat.choices[0].finish_reason == "length"


def test_a_response_as_an_anthropic_message() -> None:
    response = {
        "id": "resp_9",
        "object": "response",
        "status": "completed",
        "model": "gpt-5",
        "output": [
            {
                "id": "rs",
                "type": "reasoning",
                "summary": [
                    {"type": "summary_text", "text": "a"},
                    {"type": "summary_text", "text": "b"},
                ],
                "encrypted_content": "enc",
            },
            {
                "id": "m",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": "Hi", "annotations": []}],
            },
        ],
        "usage": {
            "input_tokens": 7,
            "input_tokens_details": {"cached_tokens": 2},
            "output_tokens": 5,
            "output_tokens_details": {"reasoning_tokens": 1},
            "total_tokens": 12,
        },
    }
    message = validate("messages", translate_answer("responses", "messages", response))
    assert message.id == "msg_9"
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "a\n\nb" and message.content[0].signature == "enc"
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (5, 2)


@pytest.mark.parametrize(
    ("status", "anthropic_type", "openai_type"),
    [
        (400, "invalid_request_error", "invalid_request_error"),
        (401, "authentication_error", "authentication_error"),
        (403, "permission_error", "permission_error"),
        (404, "not_found_error", "not_found_error"),
        (413, "request_too_large", "invalid_request_error"),
        (429, "rate_limit_error", "rate_limit_error"),
        (500, "api_error", "api_error"),
        (529, "overloaded_error", "api_error"),
    ],
)
def test_error_bodies_keep_their_meaning_across_the_apis(
    status: int, anthropic_type: str, openai_type: str
) -> None:
    body = anthropic_error_body(status, "no")
    assert body == {"type": "error", "error": {"type": anthropic_type, "message": "no"}}
    if status != 413:
        # Anthropic documents 413 as request_too_large; the SDK's ErrorResponse model does
        # not list it (the SDK picks ContentTooLargeError by the status alone).
        assert anthropic.types.ErrorResponse.model_validate(body).error.type == anthropic_type
    # The HTTP status travels with a non-streamed error; the body says the same thing.
    as_openai = translate_answer("messages", "chat", body)
    assert as_openai["error"]["type"] == openai_type and as_openai["error"]["message"] == "no"
    assert error_from_anthropic(body).status == status
    back = translate_answer(
        "chat", "messages", {"error": {"message": "no", "type": openai_type, "code": None}}
    )
    assert back["type"] == "error" and back["error"]["message"] == "no"


def test_an_openai_quota_error_is_an_anthropic_rate_limit_error() -> None:
    error = error_from_openai(
        {"error": {"message": "quota", "type": "insufficient_quota", "code": "insufficient_quota"}}
    )
    assert error == Error(429, "quota", "insufficient_quota")
    assert anthropic_error_body(error.status, error.message)["error"]["type"] == "rate_limit_error"


def test_an_upstream_error_response_in_the_client_api_shape() -> None:
    body = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    as_openai = orjson.loads(translate_error("messages", "responses", 529, body))
    assert as_openai == {
        "error": {"message": "Overloaded", "type": "api_error", "param": None, "code": None}
    }
    openai_body = (
        b'{"error":{"message":"Bad key","type":"invalid_request_error","code":"invalid_api_key"}}'
    )
    as_anthropic = orjson.loads(translate_error("chat", "messages", 401, openai_body))
    assert as_anthropic == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "Bad key"},
    }
    garbage = orjson.loads(
        translate_error("responses", "messages", 502, b"<html>bad gateway</html>")
    )
    assert garbage == {
        "type": "error",
        "error": {"type": "api_error", "message": "the upstream answered HTTP 502"},
    }


def tool_call_answer(api: Api, call_id: Any, name: Any, arguments: Any) -> dict[str, Any]:
    """A non-streamed answer of `api` holding one tool call with these fields, as given."""
    if api == "chat":
        call = {"id": call_id, "function": {"name": name, "arguments": arguments}}
        return {"choices": [{"message": {"tool_calls": [call]}}]}
    if api == "responses":
        item = {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments}
        return {"output": [item]}
    return {"content": [{"type": "tool_use", "id": call_id, "name": name, "input": arguments}]}


@pytest.mark.parametrize("api", APIS)
def test_a_tool_call_reads_alike_from_each_apis_answer_and_odd_fields_become_empty(
    api: Api,
) -> None:
    # Messages carries the arguments as an object, the OpenAI APIs as its JSON text.
    arguments = {"a": 1} if api == "messages" else '{"a":1}'
    good = tool_call_answer(api, "call_1", "weather", arguments)
    assert message_from_answer(api, good).blocks == [
        Block("tool_call", '{"a":1}', call_id="call_1", name="weather")
    ]
    odd = tool_call_answer(api, None, None, 7)
    # Messages' arguments that are not an object read as an empty one.
    empty = "{}" if api == "messages" else ""
    assert message_from_answer(api, odd).blocks == [Block("tool_call", empty)]


PAIRS = list(itertools.permutations(APIS, 2))


@pytest.mark.parametrize(("source", "target"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
@settings(max_examples=100, deadline=None)
@given(stream=json_argument_streams())
def test_a_translated_answer_says_what_the_translated_stream_says(
    source: Api, target: Api, stream: list[Event]
) -> None:
    """Non-streamed: the answer of `source` for a stream's final message, translated to
    `target` and read back, is the final message reduced to what both APIs can say."""
    final = reassemble(stream)
    if final.error is not None:
        return  # a non-streamed failure is an HTTP error body: covered above
    body = answer_from_message(source, final)
    validate(source, body)
    translated = translate_answer(source, target, body)
    validate(target, translated)
    apis: set[Api] = {source, target}
    got = message_from_answer(target, translated)
    assert comparable(got, apis, answer=True) == comparable(final, apis, answer=True)
