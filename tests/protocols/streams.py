"""Helpers for the protocol tests: generated neutral streams, encoding to bytes, reading
bytes back through the real SSE decoder, and comparing final messages across APIs."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
from anthropic.types import ErrorResponse, RawMessageStreamEvent
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionChunk
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from gateway.protocols import Api, decoder, encoder
from gateway.protocols.events import (
    DONE,
    Block,
    BlockEnd,
    Error,
    Event,
    Finish,
    FinishReason,
    Message,
    ReasoningDelta,
    ReasoningStart,
    Reassembler,
    Start,
    TextDelta,
    TextStart,
    TokenUsage,
    ToolArgsDelta,
    ToolCallStart,
    Usage,
)
from gateway.sse import SSEDecoder

_responses_event: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
_messages_event: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)


def validate(api: Api, name: str | None, payload: Any) -> Any:
    """One client-side event checked against the official SDK's model of it."""
    if api == "responses":
        assert name == payload["type"]
        return _responses_event.validate_python(payload)
    if api == "messages":
        assert name == payload["type"]
        if name == "error":
            return ErrorResponse.model_validate(payload)
        return _messages_event.validate_python(payload)
    assert name is None
    if payload == "[DONE]" or "error" in payload:
        return payload
    return ChatCompletionChunk.model_validate(payload)


def encode(api: Api, events: list[Event], *, include_usage: bool = True) -> bytes:
    enc = encoder(api, include_usage=include_usage)
    out: list[bytes] = []
    for event in events:
        enc.encode(event, out)
    return b"".join(out)


def decode(api: Api, chunks: list[bytes]) -> list[Event]:
    """Bytes as they came off a socket -> SSE events -> the API's decoder."""
    sse = SSEDecoder()
    dec = decoder(api)
    events: list[Event] = []
    for chunk in chunks:
        for event in sse.feed(chunk):
            if event.data:
                dec.decode(event.data, events)
    assert sse.pending == 0
    return events


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    pieces, start = [], 0
    for point in points:
        pieces.append(data[start:point])
        start = point
    pieces.append(data[start:])
    return [piece for piece in pieces if piece]


def reassemble(events: list[Event]) -> Message:
    reassembler = Reassembler()
    for event in events:
        reassembler.feed(event)
    return reassembler.message


def comparable(message: Message, apis: set[Api], *, answer: bool = False) -> Message:
    """`message` reduced to what every API in `apis` can say (`answer`: non-streamed, where
    a Chat message holds its text before its tool calls)."""
    blocks = [dataclasses.replace(block) for block in message.blocks]
    usage = message.usage or TokenUsage(0, 0)
    if "chat" in apis and answer:
        blocks.sort(key=lambda block: block.kind == "tool_call")
    if "messages" in apis and answer:
        for block in blocks:  # a Messages answer holds a tool's input as an object
            if block.kind == "tool_call" and not block.text:
                block.text = "{}"
    if "chat" in apis:
        # Chat has no reasoning, no empty or adjacent separate text blocks, no cache writes
        # apart from the input count.
        blocks = [block for block in blocks if block.kind != "reasoning"]
        merged: list[Block] = []
        for block in blocks:
            if block.kind == "text" and merged and merged[-1].kind == "text":
                merged[-1].text += block.text
            else:
                merged.append(block)
        blocks = [block for block in merged if block.kind != "text" or block.text]
        usage = usage._replace(cache_write_tokens=0)
    error = message.error
    if error is not None:
        # Mid-stream, an error's status is only what its type says: rate limited or not.
        error = Error(429 if error.status == 429 else 500, error.message)
        return Message(model=message.model, blocks=blocks, error=error)
    return Message(
        model=message.model,
        blocks=blocks,
        finish=message.finish or "stop",
        usage=usage,
        done=message.done,
    )


# --- generated neutral streams ------------------------------------------------------------

_text = st.text(min_size=1, max_size=12)
_name = st.from_regex(r"[a-z_][a-z0-9_]{0,11}", fullmatch=True)
_ids = st.from_regex(r"[A-Za-z0-9]{4,12}", fullmatch=True)


@st.composite
def _block(draw: st.DrawFn, number: int) -> list[Event]:
    kind = draw(st.sampled_from(["text", "text", "tool", "reasoning"]))
    deltas = draw(st.lists(_text, max_size=4))
    if kind == "text":
        return [TextStart(number), *(TextDelta(number, t) for t in deltas), BlockEnd(number)]
    if kind == "tool":
        call_id = f"call_{draw(_ids)}_{number}"  # unique in a stream, as every upstream makes them
        start = ToolCallStart(number, call_id, draw(_name))
        return [start, *(ToolArgsDelta(number, t) for t in deltas), BlockEnd(number)]
    events: list[Event] = [ReasoningStart(number)]
    events.extend(ReasoningDelta(number, t) for t in deltas)
    if draw(st.booleans()):
        events.append(ReasoningDelta(number, "", draw(_ids)))
    events.append(BlockEnd(number))
    return events


@st.composite
def _usage(draw: st.DrawFn) -> TokenUsage:
    cached = draw(st.integers(0, 1000))
    written = draw(st.integers(0, 1000))
    output = draw(st.integers(0, 5000))
    return TokenUsage(
        cached + written + draw(st.integers(0, 5000)),
        output,
        cached_input_tokens=cached,
        cache_write_tokens=written,
        reasoning_tokens=draw(st.integers(0, output)),
    )


@st.composite
def neutral_streams(draw: st.DrawFn) -> list[Event]:
    """A stream any upstream could send: blocks, then a finish and usage and the end, or
    an error anywhere after the start."""
    events: list[Event] = [Start("msg_" + draw(_ids), draw(_name))]
    blocks = draw(st.integers(0, 4))
    has_tools = False
    for number in range(blocks):
        block = draw(_block(number))
        has_tools = has_tools or isinstance(block[0], ToolCallStart)
        events.extend(block)
    if draw(st.integers(0, 4)) == 0:
        cut = draw(st.integers(1, len(events)))
        status = draw(st.sampled_from([400, 429, 500, 529]))
        return [*events[:cut], Error(status, draw(_text))]
    reasons: list[FinishReason] = ["length", "content_filter"]
    reasons.append("tool_calls" if has_tools else "stop")
    events.append(Finish(draw(st.sampled_from(reasons))))
    events.append(Usage(draw(_usage())))
    events.append(DONE)
    return events


@st.composite
def json_argument_streams(draw: st.DrawFn) -> list[Event]:
    """Generated streams whose tool arguments, joined, are JSON objects (the Anthropic SDK
    parses them as they stream)."""
    events = draw(neutral_streams())
    pieces: dict[int, list[int]] = {}
    for position, event in enumerate(events):
        if isinstance(event, ToolArgsDelta):
            pieces.setdefault(event.block, []).append(position)
    for block, positions in pieces.items():
        whole = orjson.dumps({"q": "".join(events[p].partial_json for p in positions)}).decode()  # type: ignore[union-attr]
        cuts = sorted(
            draw(
                st.lists(
                    st.integers(1, len(whole) - 1),
                    min_size=len(positions) - 1,
                    max_size=len(positions) - 1,
                )
            )
        )
        bounds = [0, *cuts, len(whole)]
        for n, position in enumerate(positions):
            events[position] = ToolArgsDelta(block, whole[bounds[n] : bounds[n + 1]])
    return [e for e in events if not (isinstance(e, ToolArgsDelta) and not e.partial_json)]
