"""Anthropic Messages: its stream and its answer to and from the neutral events.

`MessagesDecoder` reads Messages stream payloads into neutral events: `text`, `thinking`
(its deltas and `signature_delta`) and `tool_use` blocks, usage from `message_start` and
the cumulative counts of `message_delta` (cache reads and writes added to the input, as
OpenAI counts it), the stop reason, `message_stop`, and `error` events.
`MessagesEncoder` writes neutral events the way Anthropic's servers do: `message_start`,
`content_block_start` / `content_block_delta` / `content_block_stop` with indexes counted
from 0, then one `message_delta` (stop reason and usage) and `message_stop` once the
upstream is done; an error is `event: error` and nothing after it.

Deliberately dropped by the decoder: `redacted_thinking` (opaque to every other API),
server-tool blocks (`server_tool_use`, web search results: the upstream ran them, no
client has anything to call), citations, `ping` (the relay sends its own keep-alives) and
event types added after this was written (ignoring them is forward compatible).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from gateway.protocols.chat import as_int, core_id
from gateway.protocols.errors import anthropic_error_body, error_from_anthropic, malformed
from gateway.protocols.events import (
    DONE,
    Block,
    BlockEnd,
    Done,
    Error,
    Event,
    Finish,
    FinishReason,
    Message,
    ReasoningDelta,
    ReasoningStart,
    Start,
    TextDelta,
    TextStart,
    TokenUsage,
    ToolArgsDelta,
    ToolCallStart,
    Usage,
    new_event,
    tool_call_block,
)

_FINISH: dict[Any, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
STOP_REASONS: dict[FinishReason, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
_INPUT_KEYS = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


def finish_reason(stop_reason: Any) -> FinishReason:
    return _FINISH.get(stop_reason, "stop") if type(stop_reason) is str else "stop"


class _Counts:
    """Anthropic's latest count of each kind of token (message_delta's replace
    message_start's, and may leave some out)."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def update(self, usage: dict[str, Any]) -> TokenUsage:
        counts = self.counts
        for key in (*_INPUT_KEYS, "output_tokens"):
            value = usage.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                counts[key] = value
        details = usage.get("output_tokens_details")
        if isinstance(details, dict) and isinstance(details.get("thinking_tokens"), int):
            counts["thinking_tokens"] = details["thinking_tokens"]
        return usage_of(counts)


def usage_of(usage: dict[str, Any]) -> TokenUsage:
    cached = as_int(usage.get("cache_read_input_tokens"))
    written = as_int(usage.get("cache_creation_input_tokens"))
    details = usage.get("output_tokens_details")
    thinking = usage.get("thinking_tokens")
    if isinstance(details, dict):
        thinking = details.get("thinking_tokens")
    return TokenUsage(
        as_int(usage.get("input_tokens")) + cached + written,
        as_int(usage.get("output_tokens")),
        cached_input_tokens=cached,
        cache_write_tokens=written,
        reasoning_tokens=as_int(thinking),
    )


def usage_body(usage: TokenUsage) -> dict[str, Any]:
    body: dict[str, Any] = {
        "input_tokens": max(
            usage.input_tokens - usage.cached_input_tokens - usage.cache_write_tokens, 0
        ),
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cached_input_tokens,
        "output_tokens": usage.output_tokens,
    }
    if usage.reasoning_tokens:
        body["output_tokens_details"] = {"thinking_tokens": usage.reasoning_tokens}
    return body


class MessagesDecoder:
    """Messages stream payloads in, neutral events out.

    One block is open at a time, as Anthropic streams them: a block that starts closes the
    one still open (its late deltas and stop are then not relayed), an event about another
    index is not relayed, and the end of the message closes what is open.
    """

    __slots__ = ("_block", "_blocks", "_counts", "_index")

    def __init__(self) -> None:
        self._index = -1
        """Anthropic's index of the open block, -1 when none is (server-tool and redacted
        blocks are never open: not relayed)."""
        self._block = -1
        self._blocks = 0
        self._counts = _Counts()

    def decode(self, data: bytes, out: list[Event]) -> None:
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            out.append(malformed("messages", "an event that is not JSON"))
            return
        if not isinstance(payload, dict):
            out.append(malformed("messages", "an event that is not a JSON object"))
            return
        kind = payload.get("type")
        if kind == "content_block_delta":
            delta = payload.get("delta")
            if self._index < 0 or payload.get("index") != self._index or type(delta) is not dict:
                return
            block = self._block
            delta_kind = delta.get("type")
            if delta_kind == "text_delta":
                text = delta.get("text")
                if text and type(text) is str:
                    out.append(new_event(TextDelta, (block, text)))
            elif delta_kind == "input_json_delta":
                partial = delta.get("partial_json")
                if partial and type(partial) is str:
                    out.append(new_event(ToolArgsDelta, (block, partial)))
            elif delta_kind == "thinking_delta":
                thinking = delta.get("thinking")
                if thinking and type(thinking) is str:
                    out.append(new_event(ReasoningDelta, (block, thinking, None)))
            elif delta_kind == "signature_delta":
                signature = delta.get("signature")
                if isinstance(signature, str):
                    out.append(ReasoningDelta(block, "", signature))
        elif kind == "content_block_start":
            self._block_start(payload, out)
        elif kind == "content_block_stop":
            if self._index >= 0 and payload.get("index") == self._index:
                self._close(out)
        elif kind == "message_start":
            message = payload.get("message")
            if not isinstance(message, dict):
                message = {}
            usage = message.get("usage")
            out.append(
                Start(
                    str(message.get("id") or ""),
                    str(message.get("model") or ""),
                    self._counts.update(usage) if isinstance(usage, dict) else None,
                )
            )
        elif kind == "message_delta":
            self._close(out)
            delta = payload.get("delta")
            stop_reason = delta.get("stop_reason") if isinstance(delta, dict) else None
            if stop_reason:
                out.append(Finish(finish_reason(stop_reason)))
            usage = payload.get("usage")
            if isinstance(usage, dict):
                out.append(Usage(self._counts.update(usage)))
        elif kind == "message_stop":
            self._close(out)
            out.append(DONE)
        elif kind == "error":
            out.append(error_from_anthropic(payload))
        # ping and types added after this was written: nothing to say

    def _close(self, out: list[Event]) -> None:
        if self._index >= 0:
            out.append(BlockEnd(self._block))
            self._index = -1

    def _open(self, index: int) -> int:
        self._index = index
        self._block = self._blocks
        self._blocks += 1
        return self._block

    def _block_start(self, payload: dict[str, Any], out: list[Event]) -> None:
        index = payload.get("index")
        block = payload.get("content_block")
        if type(index) is not int or index < 0 or not isinstance(block, dict):
            return
        self._close(out)  # Anthropic's blocks come one after the other
        kind = block.get("type")
        if kind == "text":
            number = self._open(index)
            out.append(TextStart(number))
            text = block.get("text")
            if text and isinstance(text, str):
                out.append(TextDelta(number, text))
        elif kind == "tool_use":
            number = self._open(index)
            call_id, name = block.get("id"), block.get("name")
            out.append(
                ToolCallStart(
                    number,
                    call_id if isinstance(call_id, str) else "",
                    name if isinstance(name, str) else "",
                )
            )
            given = block.get("input")
            if given and isinstance(given, dict):  # streamed input starts empty; some don't
                out.append(ToolArgsDelta(number, json_text(given)))
        elif kind == "thinking":
            number = self._open(index)
            out.append(ReasoningStart(number))
            thinking, signature = block.get("thinking"), block.get("signature")
            if thinking or signature:
                out.append(
                    ReasoningDelta(
                        number,
                        thinking if isinstance(thinking, str) else "",
                        signature if isinstance(signature, str) and signature else None,
                    )
                )


class MessagesEncoder:
    """Neutral events in, Messages stream SSE bytes out."""

    __slots__ = (
        "_finish",
        "_index",
        "_started",
        "_text_prefix",
        "_thinking_prefix",
        "_tool_prefix",
        "_usage",
    )

    _TEXT = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'

    def __init__(self) -> None:
        self._index = -1
        self._started = False
        self._finish: FinishReason | None = None
        self._usage: TokenUsage | None = None
        self._text_prefix = self._tool_prefix = self._thinking_prefix = b""

    def _open(self, block: dict[str, Any], out: list[bytes]) -> bytes:
        if not self._started:  # an upstream that skipped its start: the client needs one
            self.encode(Start("", ""), out)
        self._index += 1
        index = str(self._index).encode()
        out.append(
            b'event: content_block_start\ndata: {"type":"content_block_start","index":'
            + index
            + b',"content_block":'
            + orjson.dumps(block)
            + b"}\n\n"
        )
        return self._TEXT + index + b',"delta":{"type":'

    def encode(self, event: Event, out: list[bytes]) -> None:
        # Dispatch on the exact class, most frequent first; the per-token branches read the
        # tuple by position (event[1]: the text) rather than narrow with isinstance.
        kind = type(event)
        if kind is TextDelta:
            out.append(self._text_prefix + orjson.dumps(event[1]) + b"}}\n\n")  # type: ignore[misc]
        elif kind is ToolArgsDelta:
            out.append(self._tool_prefix + orjson.dumps(event[1]) + b"}}\n\n")  # type: ignore[misc]
        elif kind is ReasoningDelta:
            assert isinstance(event, ReasoningDelta)
            if event.text:
                out.append(
                    self._thinking_prefix
                    + b'"thinking_delta","thinking":'
                    + orjson.dumps(event.text)
                    + b"}}\n\n"
                )
            if event.signature is not None:
                out.append(
                    self._thinking_prefix
                    + b'"signature_delta","signature":'
                    + orjson.dumps(event.signature)
                    + b"}}\n\n"
                )
        elif kind is TextStart:
            self._text_prefix = (
                self._open({"type": "text", "text": ""}, out) + b'"text_delta","text":'
            )
        elif kind is ToolCallStart:
            assert isinstance(event, ToolCallStart)
            block = {"type": "tool_use", "id": event.call_id, "name": event.name, "input": {}}
            self._tool_prefix = self._open(block, out) + b'"input_json_delta","partial_json":'
        elif kind is ReasoningStart:
            block = {"type": "thinking", "thinking": "", "signature": ""}
            self._thinking_prefix = self._open(block, out)
        elif kind is BlockEnd:
            out.append(
                b'event: content_block_stop\ndata: {"type":"content_block_stop","index":'
                + str(self._index).encode()
                + b"}\n\n"
            )
        elif kind is Start:
            assert isinstance(event, Start)
            self._started = True
            self._usage = event.usage
            message: dict[str, Any] = {
                "id": messages_id(event.id),
                "type": "message",
                "role": "assistant",
                "model": event.model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": usage_body(event.usage or TokenUsage(0, 0)),
            }
            out.append(
                b'event: message_start\ndata: {"type":"message_start","message":'
                + orjson.dumps(message)
                + b"}\n\n"
            )
        elif kind is Usage:
            assert isinstance(event, Usage)
            self._usage = event.usage
        elif kind is Finish:
            assert isinstance(event, Finish)
            self._finish = event.reason
        elif kind is Done:
            if not self._started:
                self.encode(Start("", ""), out)
            delta = {
                "type": "message_delta",
                "delta": {
                    "stop_reason": STOP_REASONS[self._finish or "stop"],
                    "stop_sequence": None,
                },
                "usage": usage_body(self._usage or TokenUsage(0, 0)),
            }
            out.append(b"event: message_delta\ndata: " + orjson.dumps(delta) + b"\n\n")
            out.append(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
        elif kind is Error:
            assert isinstance(event, Error)
            body = anthropic_error_body(event.status, event.message)
            out.append(b"event: error\ndata: " + orjson.dumps(body) + b"\n\n")


def json_text(value: Any) -> str:
    """A tool's `input` as the JSON string the OpenAI APIs carry."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:  # past orjson's limits (64-bit integers, 254 levels)
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def messages_id(answer_id: str) -> str:
    return answer_id if answer_id.startswith("msg_") else "msg_" + core_id(answer_id)


# --- the non-streamed answer --------------------------------------------------------------


def message_from_answer(body: Any) -> Message:
    """A Messages answer (or error body) as a neutral `Message`."""
    message = Message()
    if not isinstance(body, dict):
        return message
    if body.get("type") == "error":
        message.error = error_from_anthropic(body)
        return message
    message.id, message.model = str(body.get("id") or ""), str(body.get("model") or "")
    usage = body.get("usage")
    message.usage = usage_of(usage) if isinstance(usage, dict) else None
    message.finish = finish_reason(body.get("stop_reason"))
    message.done = True
    content = body.get("content")
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            message.blocks.append(Block("text", block["text"]))
        elif kind == "thinking":
            signature = block.get("signature")
            message.blocks.append(
                Block(
                    "reasoning",
                    str(block.get("thinking") or ""),
                    signature=signature if isinstance(signature, str) and signature else None,
                )
            )
        elif kind == "tool_use":
            given = block.get("input")
            arguments = json_text(given if isinstance(given, dict) else {})
            message.blocks.append(tool_call_block(arguments, block.get("id"), block.get("name")))
    return message


def answer_from_message(message: Message) -> dict[str, Any]:
    """A neutral `Message` as a Messages answer (an error as Anthropic's error body)."""
    if message.error is not None:
        return anthropic_error_body(message.error.status, message.error.message)
    content: list[dict[str, Any]] = []
    for block in message.blocks:
        if block.kind == "text":
            content.append({"type": "text", "text": block.text})
        elif block.kind == "reasoning":
            content.append(
                {"type": "thinking", "thinking": block.text, "signature": block.signature or ""}
            )
        else:
            content.append(
                {
                    "type": "tool_use",
                    "id": block.call_id,
                    "name": block.name,
                    "input": tool_input(block.text),
                }
            )
    return {
        "id": messages_id(message.id),
        "type": "message",
        "role": "assistant",
        "model": message.model,
        "content": content,
        "stop_reason": STOP_REASONS[message.finish or "stop"],
        "stop_sequence": None,
        "usage": usage_body(message.usage or TokenUsage(0, 0)),
    }


def tool_input(arguments: str) -> dict[str, Any]:
    """A tool call's JSON arguments as Anthropic's `input` object ({} when not an object:
    a model cut short by the token limit leaves them unfinished)."""
    if not arguments.strip():
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
