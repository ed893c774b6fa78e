"""Streams as real upstreams send them, translated to each other API: what the client gets,
event by event where the order matters."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.protocols import Api, stream_translator
from gateway.protocols.events import Error
from gateway.sse import SSEDecoder
from tests.protocols.streams import validate


def sse(*events: tuple[str | None, dict[str, Any] | str]) -> bytes:
    out = b""
    for name, data in events:
        if name is not None:
            out += b"event: " + name.encode() + b"\n"
        out += (
            b"data: " + (data.encode() if isinstance(data, str) else orjson.dumps(data)) + b"\n\n"
        )
    return out


def translate(upstream: Api, client: Api, data: bytes, **kw: Any) -> list[tuple[str | None, Any]]:
    translator = stream_translator(upstream, client, **kw)
    out = b"".join(translator.feed(e.data) for e in SSEDecoder().feed(data) if e.data)
    events = [
        (e.event, e.data.decode() if e.data == b"[DONE]" else orjson.loads(e.data))
        for e in SSEDecoder().feed(out)
    ]
    for name, payload in events:
        validate(client, name, payload)
    return events


# --- an Anthropic upstream ------------------------------------------------------------------


def anthropic_stream(stop_reason: str = "tool_use", *, error: bool = False) -> bytes:
    events: list[tuple[str | None, dict[str, Any] | str]] = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_01",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-x",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": 10,
                        "cache_read_input_tokens": 100,
                        "cache_creation_input_tokens": 5,
                        "output_tokens": 1,
                    },
                },
            },
        ),
        ("ping", {"type": "ping"}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "thinking", "thinking": "", "signature": ""},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "thinking_delta", "thinking": "Need weather."},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "signature_delta", "signature": "EqQBsig"},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "text_delta", "text": "Checking"},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "text_delta", "text": " now."},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    ]
    if error:
        events.append(
            (
                "error",
                {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
            )
        )
        return sse(*events)
    events += [
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 2,
                "content_block": {
                    "type": "tool_use",
                    "id": "toolu_A",
                    "name": "weather",
                    "input": {},
                },
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 2,
                "delta": {"type": "input_json_delta", "partial_json": ""},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 2,
                "delta": {"type": "input_json_delta", "partial_json": '{"city": '},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 2,
                "delta": {"type": "input_json_delta", "partial_json": '"Paris"}'},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 2}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 3,
                "content_block": {"type": "tool_use", "id": "toolu_B", "name": "time", "input": {}},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 3,
                "delta": {"type": "input_json_delta", "partial_json": "{}"},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 3}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": 42, "output_tokens_details": {"thinking_tokens": 7}},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return sse(*events)


def test_an_anthropic_stream_to_a_responses_client() -> None:
    events = translate("messages", "responses", anthropic_stream())
    types = [payload["type"] for _, payload in events]
    assert types == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done", "response.reasoning_summary_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed",
    ]  # fmt: skip
    assert [name for name, _ in events] == types
    assert [payload["sequence_number"] for _, payload in events] == list(range(len(events)))
    response = events[-1][1]["response"]
    assert response["id"] == "resp_01" and response["model"] == "claude-x"
    assert response["status"] == "completed"
    reasoning, message, weather, clock = response["output"]
    assert reasoning["summary"] == [{"type": "summary_text", "text": "Need weather."}]
    assert reasoning["encrypted_content"] == "EqQBsig"
    assert message["content"][0]["text"] == "Checking now."
    assert (weather["call_id"], weather["name"], weather["arguments"]) == (
        "toolu_A",
        "weather",
        '{"city": "Paris"}',
    )
    assert (clock["call_id"], clock["arguments"]) == ("toolu_B", "{}")
    # Anthropic counts cache reads and writes apart from input_tokens; OpenAI includes them.
    assert response["usage"] == {
        "input_tokens": 115,
        "input_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 5},
        "output_tokens": 42,
        "output_tokens_details": {"reasoning_tokens": 7},
        "total_tokens": 157,
    }


def test_an_anthropic_stream_to_a_chat_client() -> None:
    events = translate("messages", "chat", anthropic_stream(), include_usage=True)
    deltas = [payload["choices"][0]["delta"] for _, payload in events[:-2]]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"content": "Checking"},
        {"content": " now."},
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "toolu_A",
                    "type": "function",
                    "function": {"name": "weather", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
        {
            "tool_calls": [
                {
                    "index": 1,
                    "id": "toolu_B",
                    "type": "function",
                    "function": {"name": "time", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]},
        {},
    ]
    assert events[-3][1]["choices"][0]["finish_reason"] == "tool_calls"
    assert events[-2][1]["choices"] == []
    assert events[-2][1]["usage"]["prompt_tokens"] == 115
    assert events[-2][1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 100}
    assert events[-2][1]["usage"]["completion_tokens_details"] == {"reasoning_tokens": 7}
    assert events[-1] == (None, "[DONE]")
    assert {payload["id"] for _, payload in events[:-1]} == {"chatcmpl-01"}


@pytest.mark.parametrize(
    ("stop_reason", "chat", "responses"),
    [
        ("end_turn", "stop", ("response.completed", None)),
        ("stop_sequence", "stop", ("response.completed", None)),
        ("max_tokens", "length", ("response.incomplete", "max_output_tokens")),
        ("tool_use", "tool_calls", ("response.completed", None)),
        ("refusal", "content_filter", ("response.incomplete", "content_filter")),
    ],
)
def test_each_anthropic_stop_reason_reaches_each_client(
    stop_reason: str, chat: str, responses: tuple[str, str | None]
) -> None:
    data = anthropic_stream(stop_reason)
    chunks = translate("messages", "chat", data)
    assert [
        p["choices"][0]["finish_reason"] for _, p in chunks[:-1] if p["choices"][0]["finish_reason"]
    ] == [chat]
    last = translate("messages", "responses", data)[-1][1]
    assert last["type"] == responses[0]
    details = last["response"]["incomplete_details"]
    assert (details["reason"] if details else None) == responses[1]


def test_an_anthropic_error_after_some_events_fails_the_response_never_completes_it() -> None:
    events = translate("messages", "responses", anthropic_stream(error=True))
    types = [payload["type"] for _, payload in events]
    assert types[-1] == "response.failed"
    assert "response.completed" not in types and "response.incomplete" not in types
    failed = events[-1][1]["response"]
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": "server_error", "message": "Overloaded"}
    chat = translate("messages", "chat", anthropic_stream(error=True))
    assert chat[-1][1] == {
        "error": {"message": "Overloaded", "type": "api_error", "param": None, "code": None}
    }
    assert all(data != "[DONE]" for _, data in chat)


# --- an OpenAI Chat upstream ----------------------------------------------------------------


def chat_stream(finish: str = "tool_calls", *, error: bool = False) -> bytes:
    head = {"id": "chatcmpl-9x", "object": "chat.completion.chunk", "created": 1, "model": "gpt-x"}

    def chunk(
        delta: dict[str, Any], finish_reason: str | None = None
    ) -> tuple[None, dict[str, Any]]:
        return (
            None,
            {
                **head,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
                ],
            },
        )

    events: list[tuple[str | None, dict[str, Any] | str]] = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Let me "}),
        chunk({"content": "check."}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": ""},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
    ]
    if error:
        events.append(
            (
                None,
                {
                    "error": {
                        "message": "Rate limit reached",
                        "type": "rate_limit_error",
                        "param": None,
                        "code": "rate_limit_exceeded",
                    }
                },
            )
        )
        return sse(*events)
    events += [
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "time", "arguments": "{}"},
                    }
                ]
            }
        ),
        chunk({}, finish),
        (
            None,
            {
                **head,
                "choices": [],
                "usage": {
                    "prompt_tokens": 50,
                    "completion_tokens": 20,
                    "total_tokens": 70,
                    "prompt_tokens_details": {"cached_tokens": 30},
                    "completion_tokens_details": {"reasoning_tokens": 8},
                },
            },
        ),
        (None, "[DONE]"),
    ]
    return sse(*events)


def test_an_openai_chat_stream_to_a_messages_client() -> None:
    events = translate("chat", "messages", chat_stream())
    assert [name for name, _ in events] == [payload["type"] for _, payload in events]
    compact = [
        (p["type"], p.get("index"), p.get("content_block") or p.get("delta"))
        for _, p in events[1:-2]
    ]
    assert compact == [
        ("content_block_start", 0, {"type": "text", "text": ""}),
        ("content_block_delta", 0, {"type": "text_delta", "text": "Let me "}),
        ("content_block_delta", 0, {"type": "text_delta", "text": "check."}),
        ("content_block_stop", 0, None),
        (
            "content_block_start",
            1,
            {"type": "tool_use", "id": "call_1", "name": "weather", "input": {}},
        ),
        ("content_block_delta", 1, {"type": "input_json_delta", "partial_json": '{"city":'}),
        ("content_block_delta", 1, {"type": "input_json_delta", "partial_json": '"Oslo"}'}),
        ("content_block_stop", 1, None),
        (
            "content_block_start",
            2,
            {"type": "tool_use", "id": "call_2", "name": "time", "input": {}},
        ),
        ("content_block_delta", 2, {"type": "input_json_delta", "partial_json": "{}"}),
        ("content_block_stop", 2, None),
    ]
    start = events[0][1]["message"]
    assert (start["id"], start["model"]) == ("msg_9x", "gpt-x")
    assert events[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {
            "input_tokens": 20,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 30,
            "output_tokens": 20,
            "output_tokens_details": {"thinking_tokens": 8},
        },
    }
    assert events[-1] == ("message_stop", {"type": "message_stop"})


@pytest.mark.parametrize(
    ("finish", "stop_reason", "responses"),
    [
        ("stop", "end_turn", "response.completed"),
        ("length", "max_tokens", "response.incomplete"),
        ("tool_calls", "tool_use", "response.completed"),
        ("content_filter", "refusal", "response.incomplete"),
    ],
)
def test_each_chat_finish_reason_reaches_each_client(
    finish: str, stop_reason: str, responses: str
) -> None:
    data = chat_stream(finish)
    assert translate("chat", "messages", data)[-2][1]["delta"]["stop_reason"] == stop_reason
    assert translate("chat", "responses", data)[-1][1]["type"] == responses


def test_a_chat_error_mid_stream_is_an_anthropic_error_event() -> None:
    events = translate("chat", "messages", chat_stream(error=True))
    assert events[-1] == (
        "error",
        {"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limit reached"}},
    )
    assert "message_stop" not in [name for name, _ in events]
    failed = translate("chat", "responses", chat_stream(error=True))[-1][1]
    assert failed["response"]["error"]["code"] == "rate_limit_exceeded"


# --- an OpenAI Responses upstream ------------------------------------------------------------


def responses_stream(*, end: str = "completed") -> bytes:
    resp = {
        "id": "resp_77",
        "object": "response",
        "created_at": 1,
        "model": "gpt-5",
        "status": "in_progress",
        "output": [],
    }
    n = iter(range(100))

    def ev(kind: str, **fields: Any) -> tuple[str, dict[str, Any]]:
        return (kind, {"type": kind, "sequence_number": next(n), **fields})

    events = [
        ev("response.created", response=resp),
        ev("response.in_progress", response=resp),
        ev(
            "response.output_item.added",
            output_index=0,
            item={"id": "rs_1", "type": "reasoning", "summary": []},
        ),
        ev(
            "response.reasoning_summary_part.added",
            item_id="rs_1",
            output_index=0,
            summary_index=0,
            part={"type": "summary_text", "text": ""},
        ),
        ev(
            "response.reasoning_summary_text.delta",
            item_id="rs_1",
            output_index=0,
            summary_index=0,
            delta="Think.",
        ),
        ev(
            "response.reasoning_summary_text.done",
            item_id="rs_1",
            output_index=0,
            summary_index=0,
            text="Think.",
        ),
        ev(
            "response.reasoning_summary_part.done",
            item_id="rs_1",
            output_index=0,
            summary_index=0,
            part={"type": "summary_text", "text": "Think."},
        ),
        ev(
            "response.output_item.done",
            output_index=0,
            item={
                "id": "rs_1",
                "type": "reasoning",
                "summary": [{"type": "summary_text", "text": "Think."}],
                "encrypted_content": "gAAAenc",
            },
        ),
        ev(
            "response.output_item.added",
            output_index=1,
            item={
                "id": "msg_1",
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            },
        ),
        ev(
            "response.content_part.added",
            item_id="msg_1",
            output_index=1,
            content_index=0,
            part={"type": "output_text", "text": "", "annotations": []},
        ),
        ev(
            "response.output_text.delta",
            item_id="msg_1",
            output_index=1,
            content_index=0,
            delta="Hi",
            logprobs=[],
        ),
        ev(
            "response.output_text.done",
            item_id="msg_1",
            output_index=1,
            content_index=0,
            text="Hi",
            logprobs=[],
        ),
        ev(
            "response.content_part.done",
            item_id="msg_1",
            output_index=1,
            content_index=0,
            part={"type": "output_text", "text": "Hi", "annotations": []},
        ),
        ev(
            "response.output_item.done",
            output_index=1,
            item={
                "id": "msg_1",
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Hi", "annotations": []}],
            },
        ),
        ev(
            "response.output_item.added",
            output_index=2,
            item={
                "id": "fc_1",
                "type": "function_call",
                "status": "in_progress",
                "call_id": "call_Z",
                "name": "f",
                "arguments": "",
            },
        ),
        ev(
            "response.function_call_arguments.delta",
            item_id="fc_1",
            output_index=2,
            delta='{"a":1}',
        ),
        ev(
            "response.function_call_arguments.done",
            item_id="fc_1",
            output_index=2,
            arguments='{"a":1}',
        ),
        ev(
            "response.output_item.done",
            output_index=2,
            item={
                "id": "fc_1",
                "type": "function_call",
                "status": "completed",
                "call_id": "call_Z",
                "name": "f",
                "arguments": '{"a":1}',
            },
        ),
    ]
    usage = {
        "input_tokens": 9,
        "input_tokens_details": {"cached_tokens": 4},
        "output_tokens": 6,
        "output_tokens_details": {"reasoning_tokens": 3},
        "total_tokens": 15,
    }
    if end == "completed":
        events.append(
            ev("response.completed", response={**resp, "status": "completed", "usage": usage})
        )
    elif end == "incomplete":
        events.append(
            ev(
                "response.incomplete",
                response={
                    **resp,
                    "status": "incomplete",
                    "incomplete_details": {"reason": "max_output_tokens"},
                    "usage": usage,
                },
            )
        )
    elif end == "failed":
        events.append(
            ev(
                "response.failed",
                response={
                    **resp,
                    "status": "failed",
                    "error": {"code": "server_error", "message": "boom"},
                },
            )
        )
    else:
        events.append(ev("error", code="rate_limit_exceeded", message="slow down", param=None))
    return sse(*events)


def test_a_responses_stream_to_a_messages_client() -> None:
    events = translate("responses", "messages", responses_stream())
    compact = [
        (p["type"], p.get("index"), p.get("content_block") or p.get("delta")) for _, p in events
    ]
    assert compact[1:-2] == [
        ("content_block_start", 0, {"type": "thinking", "thinking": "", "signature": ""}),
        ("content_block_delta", 0, {"type": "thinking_delta", "thinking": "Think."}),
        ("content_block_delta", 0, {"type": "signature_delta", "signature": "gAAAenc"}),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, {"type": "text", "text": ""}),
        ("content_block_delta", 1, {"type": "text_delta", "text": "Hi"}),
        ("content_block_stop", 1, None),
        ("content_block_start", 2, {"type": "tool_use", "id": "call_Z", "name": "f", "input": {}}),
        ("content_block_delta", 2, {"type": "input_json_delta", "partial_json": '{"a":1}'}),
        ("content_block_stop", 2, None),
    ]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    assert events[-2][1]["usage"] == {
        "input_tokens": 5,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 4,
        "output_tokens": 6,
        "output_tokens_details": {"thinking_tokens": 3},
    }


@pytest.mark.parametrize(
    ("end", "chat", "messages"),
    [
        ("incomplete", "length", "max_tokens"),
        (
            "failed",
            {"message": "boom", "type": "api_error", "param": None, "code": "server_error"},
            "api_error",
        ),
        (
            "error",
            {
                "message": "slow down",
                "type": "rate_limit_error",
                "param": None,
                "code": "rate_limit_exceeded",
            },
            "rate_limit_error",
        ),
    ],
)
def test_how_a_responses_stream_ends_reaches_each_client(
    end: str, chat: Any, messages: str
) -> None:
    chat_events = translate("responses", "chat", responses_stream(end=end))
    message_events = translate("responses", "messages", responses_stream(end=end))
    if end == "incomplete":
        assert chat_events[-2][1]["choices"][0]["finish_reason"] == chat
        assert message_events[-2][1]["delta"]["stop_reason"] == messages
        return
    assert chat_events[-1][1] == {"error": chat}
    assert message_events[-1][1]["error"]["type"] == messages


# --- the translator itself ------------------------------------------------------------------


def test_nothing_is_relayed_after_the_stream_ended_and_a_late_failure_says_nothing() -> None:
    translator = stream_translator("messages", "responses")
    data = anthropic_stream("end_turn")
    out = b"".join(translator.feed(e.data) for e in SSEDecoder().feed(data) if e.data)
    assert translator.ended and not translator.failed
    assert translator.feed(b'{"type":"message_stop"}') == b""
    assert translator.fail(Error(504, "idle")) == b""
    assert out.count(b"response.completed") == 2  # the event line and its type


def test_a_gateway_side_failure_mid_stream_is_the_client_api_error() -> None:
    translator = stream_translator("chat", "messages")
    translator.feed(b'{"id":"c","choices":[{"index":0,"delta":{"content":"x"}}]}')
    out = translator.fail(Error(504, "the upstream went silent"))
    assert (
        out
        == b'event: error\ndata: {"type":"error","error":{"type":"timeout_error","message":"the upstream went silent"}}\n\n'
    )
    assert translator.failed


def test_an_upstream_event_that_is_not_json_is_a_502_in_the_client_api() -> None:
    translator = stream_translator("messages", "chat")
    out = translator.feed(b"{not json")
    assert translator.failed
    assert orjson.loads(out[6:])["error"]["type"] == "api_error"


def test_a_responses_server_that_skips_created_and_content_parts_still_translates() -> None:
    # Some Responses servers send no response.created and no content_part events; the
    # client still gets a whole Messages stream (message_start first) with every text.
    data = sse(
        (
            "response.output_item.added",
            {
                "type": "response.output_item.added",
                "sequence_number": 0,
                "output_index": 0,
                "item": {
                    "id": "m",
                    "type": "message",
                    "role": "assistant",
                    "status": "in_progress",
                    "content": [],
                },
            },
        ),
        (
            "response.output_text.delta",
            {
                "type": "response.output_text.delta",
                "sequence_number": 1,
                "item_id": "m",
                "output_index": 0,
                "content_index": 0,
                "delta": "Hello",
                "logprobs": [],
            },
        ),
        (
            "response.output_item.done",
            {
                "type": "response.output_item.done",
                "sequence_number": 2,
                "output_index": 0,
                "item": {
                    "id": "m",
                    "type": "message",
                    "role": "assistant",
                    "status": "completed",
                    "content": [],
                },
            },
        ),
        (
            "response.completed",
            {
                "type": "response.completed",
                "sequence_number": 3,
                "response": {"id": "r", "status": "completed"},
            },
        ),
    )
    events = translate("responses", "messages", data)
    assert [name for name, _ in events] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]  # fmt: skip
    assert events[2][1]["delta"]["text"] == "Hello"
