"""Every encoded event validates against the official SDKs' own models, and each SDK's own
stream accumulator builds from our bytes the final message the neutral stream describes."""

from __future__ import annotations

from typing import Any

import orjson
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import ErrorResponse, RawMessageStreamEvent
from hypothesis import given, settings
from openai import omit
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.chat import ChatCompletionChunk
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from gateway.protocols.events import (
    Event,
    Message,
)
from gateway.sse import SSEDecoder
from tests.protocols.streams import encode, json_argument_streams, neutral_streams, reassemble

_responses_event: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
_messages_event: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)


def sse_events(data: bytes) -> list[tuple[str | None, bytes]]:
    return [(event.event, event.data) for event in SSEDecoder().feed(data)]


def expected_blocks(message: Message, *, reasoning: bool) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for block in message.blocks:
        if block.kind == "text":
            out.append(("text", block.text))
        elif block.kind == "tool_call":
            out.append(("tool", block.call_id, block.name, block.text))
        elif reasoning:
            out.append(("reasoning", block.text, block.signature))
    return out


# --- Responses ------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(stream=neutral_streams())
def test_responses_events_validate_and_the_sdk_accumulates_the_same_answer(
    stream: list[Event],
) -> None:
    message = reassemble(stream)
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    final: Any = None
    numbers: list[int] = []
    for name, data in sse_events(encode("responses", stream)):
        payload = orjson.loads(data)
        assert name == payload["type"]
        event = _responses_event.validate_python(payload)
        numbers.append(event.sequence_number)
        for seen in state.handle_event(event):
            if seen.type in ("response.completed", "response.incomplete", "response.failed"):
                final = seen.response
    assert numbers == list(range(len(numbers)))
    assert final is not None

    if message.error is not None:
        assert final.status == "failed"
        assert final.error.message == message.error.message
        return
    assert final.status == (
        "completed" if message.finish in ("stop", "tool_calls") else "incomplete"
    )
    if message.finish == "length":
        assert final.incomplete_details.reason == "max_output_tokens"
    got: list[tuple[Any, ...]] = []
    for item in final.output:
        if item.type == "message":
            got.extend(("text", part.text) for part in item.content)
        elif item.type == "function_call":
            got.append(("tool", item.call_id, item.name, item.arguments))
        else:
            text = "".join(part.text for part in item.summary)
            got.append(("reasoning", text, item.encrypted_content))
    assert got == expected_blocks(message, reasoning=True)
    usage = message.usage
    assert usage is not None
    assert final.usage.input_tokens == usage.input_tokens
    assert final.usage.input_tokens_details.cached_tokens == usage.cached_input_tokens
    assert final.usage.output_tokens_details.reasoning_tokens == usage.reasoning_tokens
    assert final.usage.total_tokens == usage.input_tokens + usage.output_tokens


# --- Messages -------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(stream=json_argument_streams())
def test_messages_events_validate_and_the_sdk_accumulates_the_same_answer(
    stream: list[Event],
) -> None:
    message = reassemble(stream)
    snapshot: Any = None
    json_bufs: dict[int, bytes] = {}
    error: Any = None
    for name, data in sse_events(encode("messages", stream)):
        payload = orjson.loads(data)
        assert name == payload["type"]
        if name == "error":
            error = ErrorResponse.model_validate(payload)
            continue
        event = _messages_event.validate_python(payload)
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=json_bufs)

    got: list[tuple[Any, ...]] = []
    for block in snapshot.content:
        if block.type == "text":
            got.append(("text", block.text))
        elif block.type == "tool_use":
            arguments = json_bufs.get(len(got), b"").decode()
            assert block.input == (orjson.loads(arguments) if arguments else {})
            got.append(("tool", block.id, block.name, arguments))
        else:
            got.append(("reasoning", block.thinking, block.signature or None))
    assert got == expected_blocks(message, reasoning=True)
    if message.error is not None:
        assert error is not None and error.error.message == message.error.message
        return
    assert error is None
    stop = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
    assert snapshot.stop_reason == stop.get(message.finish or "stop", "refusal")
    usage = message.usage
    assert usage is not None
    sdk = snapshot.usage
    assert sdk.output_tokens == usage.output_tokens
    assert sdk.cache_read_input_tokens == usage.cached_input_tokens
    assert (
        sdk.input_tokens + sdk.cache_read_input_tokens + sdk.cache_creation_input_tokens
        == usage.input_tokens
    )


# --- Chat -----------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(stream=neutral_streams())
def test_chat_chunks_validate_and_the_sdk_accumulates_the_same_answer(
    stream: list[Event],
) -> None:
    message = reassemble(stream)
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    done = error = False
    usage: Any = None
    for _, data in sse_events(encode("chat", stream, include_usage=True)):
        assert not done and not error
        if data == b"[DONE]":
            done = True
            continue
        payload = orjson.loads(data)
        if "error" in payload:
            assert payload["error"]["message"] == message.error.message  # type: ignore[union-attr]
            error = True
            continue
        chunk = ChatCompletionChunk.model_validate(payload)
        usage = chunk.usage or usage
        list(state.handle_chunk(chunk))
    assert done == (message.error is None)
    if error:
        return
    # (get_final_completion raises on length and content_filter, by design: the snapshot)
    choice = state.current_completion_snapshot.choices[0]
    texts = "".join(b.text for b in message.blocks if b.kind == "text")
    assert (choice.message.content or "") == texts
    calls = [
        (call.id, call.function.name, call.function.arguments)
        for call in choice.message.tool_calls or []
    ]
    assert calls == [(b.call_id, b.name, b.text) for b in message.blocks if b.kind == "tool_call"]
    assert choice.finish_reason == message.finish
    assert message.usage is not None
    assert usage.prompt_tokens == message.usage.input_tokens
    assert usage.completion_tokens_details.reasoning_tokens == message.usage.reasoning_tokens
