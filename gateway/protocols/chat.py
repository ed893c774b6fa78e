"""OpenAI Chat Completions: its stream and its answer to and from the neutral events.

`ChatDecoder` reads `chat.completion.chunk` payloads (choice 0: the gateway asks for one)
into neutral events: text, tool calls numbered by their `index`, reasoning from the
`reasoning_content` / `reasoning` delta fields that DeepSeek, vLLM and OpenRouter add,
the finish reason, the usage chunk, `[DONE]`, and `{"error": ...}` events.
`ChatEncoder` writes neutral events as chunks, in the shape OpenAI's servers send: a role
chunk first, tool calls numbered from 0 in the order they open, the finish chunk, the
usage-only chunk (`"choices": []`) when the client asked for it, then `data: [DONE]`; an
error is `data: {"error": ...}` and no `[DONE]`.

Deliberately not here: reasoning in the encoder (Chat has no field for it: an OpenAI
client would not read one; the same choice as `gateway.providers.anthropic`), logprobs,
`n` > 1 (the request converters refuse it), and requests (Chat is the pivot the other
request converters translate through, see `responses` and `messages`).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.protocols.errors import error_from_openai, malformed, openai_error_body
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
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}
_DONE_BYTES = b"data: [DONE]\n\n"


def as_int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def finish_reason(value: Any) -> FinishReason:
    # A reason added after this was written still ends the answer.
    return _FINISH.get(value, "stop") if type(value) is str else "stop"


def usage_of(usage: Any) -> TokenUsage | None:
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens_details")
    completion = usage.get("completion_tokens_details")
    return TokenUsage(
        as_int(usage.get("prompt_tokens")),
        as_int(usage.get("completion_tokens")),
        cached_input_tokens=as_int(prompt.get("cached_tokens")) if isinstance(prompt, dict) else 0,
        reasoning_tokens=as_int(completion.get("reasoning_tokens"))
        if isinstance(completion, dict)
        else 0,
    )


def usage_body(usage: TokenUsage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


class ChatDecoder:
    """`chat.completion.chunk` payloads in, neutral events out."""

    __slots__ = ("_blocks", "_kind", "_open", "_started", "_tools")

    def __init__(self) -> None:
        self._started = False
        self._blocks = 0
        self._open = -1
        """The neutral number of the open block, -1 when none is."""
        self._kind = ""
        self._tools: dict[int, int] = {}
        """Chat tool_calls index -> neutral block."""

    def decode(self, data: bytes, out: list[Event]) -> None:
        """One SSE event's data (`event:` names are not Chat's) -> `out`."""
        if data == b"[DONE]":
            self._close(out)
            out.append(DONE)
            return
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            out.append(malformed("chat", "an event that is not JSON"))
            return
        if not isinstance(payload, dict):
            out.append(malformed("chat", "an event that is not a JSON object"))
            return
        if "error" in payload:
            out.append(error_from_openai(payload))
            return
        if not self._started:
            self._started = True
            out.append(Start(str(payload.get("id") or ""), str(payload.get("model") or "")))
        choices = payload.get("choices")
        if choices and type(choices) is list and type(choices[0]) is dict:
            choice = choices[0]
            delta = choice.get("delta")
            if type(delta) is dict:
                content = delta.get("content")
                if len(delta) == 1 and self._kind == "text" and content and type(content) is str:
                    # The bulk of every stream: one more token of the open text block.
                    out.append(new_event(TextDelta, (self._open, content)))
                elif delta:
                    self._delta(delta, out)
            reason = choice.get("finish_reason")
            if reason:
                self._close(out)
                out.append(Finish(finish_reason(reason)))
        usage = payload.get("usage")
        if usage:  # OpenAI sends `"usage": null` on every chunk when usage was asked for
            out.append(Usage(usage_of(usage) or TokenUsage(0, 0)))

    def _delta(self, delta: dict[str, Any], out: list[Event]) -> None:
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if reasoning and isinstance(reasoning, str):
            if self._kind != "reasoning":
                out.append(ReasoningStart(self._new("reasoning", out)))
            out.append(new_event(ReasoningDelta, (self._open, reasoning, None)))
        content = delta.get("content")
        if content and isinstance(content, str):
            if self._kind != "text":
                out.append(TextStart(self._new("text", out)))
            out.append(new_event(TextDelta, (self._open, content)))
        refusal = delta.get("refusal")
        if refusal and isinstance(refusal, str):  # a refusal is what the model said
            if self._kind != "text":
                out.append(TextStart(self._new("text", out)))
            out.append(TextDelta(self._open, refusal))
        calls = delta.get("tool_calls")
        if calls and isinstance(calls, list):
            for call in calls:
                if isinstance(call, dict):
                    self._tool_call(call, out)

    def _tool_call(self, call: dict[str, Any], out: list[Event]) -> None:
        index = as_int(call.get("index"))
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        block = self._tools.get(index)
        if block is None:
            block = self._tools[index] = self._new("tool", out)
            call_id, name = call.get("id"), function.get("name")
            out.append(
                ToolCallStart(
                    block,
                    call_id if isinstance(call_id, str) else "",
                    name if isinstance(name, str) else "",
                )
            )
        elif block != self._open:
            # Every known server streams one call after the other; the other APIs have no
            # way to reopen a closed block, so an interleaving upstream cannot be relayed.
            out.append(malformed("chat", "arguments of a tool call it had moved past"))
            return
        arguments = function.get("arguments")
        if arguments and isinstance(arguments, str):
            out.append(new_event(ToolArgsDelta, (block, arguments)))

    def _new(self, kind: str, out: list[Event]) -> int:
        self._close(out)
        self._open = self._blocks
        self._blocks += 1
        self._kind = kind
        return self._open

    def _close(self, out: list[Event]) -> None:
        if self._open >= 0:
            out.append(BlockEnd(self._open))
            self._open = -1
            self._kind = ""


class ChatEncoder:
    """Neutral events in, `chat.completion.chunk` SSE bytes out."""

    __slots__ = (
        "_head",
        "_include_usage",
        "_text_prefix",
        "_tool_args_prefix",
        "_tools",
        "_usage",
        "created",
    )

    _TAIL = b'},"logprobs":null,"finish_reason":null}]}\n\n'

    def __init__(self, *, include_usage: bool, created: int | None = None) -> None:
        self._include_usage = include_usage
        self.created = int(time.time()) if created is None else created
        self._usage: TokenUsage | None = None
        self._tools = -1
        self._set_head("chatcmpl-gateway", "")
        self._tool_args_prefix = b""

    def _set_head(self, answer_id: str, model: str) -> None:
        # Every chunk of a stream shares id, created and model: serialise them once.
        self._head = (
            b'data: {"id":'
            + orjson.dumps(answer_id)
            + b',"object":"chat.completion.chunk","created":'
            + str(self.created).encode()
            + b',"model":'
            + orjson.dumps(model)
            + b',"choices":[{"index":0,"delta":'
        )
        self._text_prefix = self._head + b'{"content":'

    def encode(self, event: Event, out: list[bytes]) -> None:
        # Dispatch on the exact class, most frequent first; the per-token branches read the
        # tuple by position (event[1]: the text) rather than narrow with isinstance.
        kind = type(event)
        if kind is TextDelta:
            out.append(self._text_prefix + orjson.dumps(event[1]) + self._TAIL)  # type: ignore[misc]
        elif kind is ToolArgsDelta:
            out.append(self._tool_args_prefix + orjson.dumps(event[1]) + b"}}]" + self._TAIL)  # type: ignore[misc]
        elif kind is ToolCallStart:
            assert isinstance(event, ToolCallStart)
            self._tools += 1
            index = str(self._tools).encode()
            call = {
                "index": self._tools,
                "id": event.call_id,
                "type": "function",
                "function": {"name": event.name, "arguments": ""},
            }
            out.append(self._head + b'{"tool_calls":[' + orjson.dumps(call) + b"]" + self._TAIL)
            self._tool_args_prefix = (
                self._head + b'{"tool_calls":[{"index":' + index + b',"function":{"arguments":'
            )
        elif kind is Start:
            assert isinstance(event, Start)
            self._set_head(chat_id(event.id), event.model)
            if event.usage is not None:
                self._usage = event.usage
            out.append(self._head + b'{"role":"assistant","content":""' + self._TAIL)
        elif kind is Finish:
            out.append(
                self._head
                + b'{},"logprobs":null,"finish_reason":'
                + orjson.dumps(event[0])  # type: ignore[misc]
                + b"}]}\n\n"
            )
        elif kind is Usage:
            assert isinstance(event, Usage)
            self._usage = event.usage
        elif kind is Done:
            if self._include_usage and self._usage is not None:
                head = self._head[: self._head.index(b',"choices":')]
                out.append(
                    head
                    + b',"choices":[],"usage":'
                    + orjson.dumps(usage_body(self._usage))
                    + b"}\n\n"
                )
            out.append(_DONE_BYTES)
        elif kind is Error:
            assert isinstance(event, Error)
            body = openai_error_body(event.status, event.message, code=event.code)
            out.append(b"data: " + orjson.dumps(body) + b"\n\n")
        # TextStart, BlockEnd: nothing to say; reasoning: no place for it in Chat


def chat_id(answer_id: str) -> str:
    return answer_id if answer_id.startswith("chatcmpl-") else "chatcmpl-" + core_id(answer_id)


def core_id(answer_id: str) -> str:
    """An answer's id without its API's prefix, so each API can put on its own."""
    for prefix in ("chatcmpl-", "resp_", "msg_"):
        if answer_id.startswith(prefix):
            return answer_id[len(prefix) :]
    return answer_id or "gateway"


# --- the non-streamed answer --------------------------------------------------------------


def message_from_answer(body: Any) -> Message:
    """A `chat.completion` as a neutral `Message` (choice 0)."""
    message = Message()
    if not isinstance(body, dict):
        return message
    if "error" in body:
        message.error = error_from_openai(body)
        return message
    message.id, message.model = str(body.get("id") or ""), str(body.get("model") or "")
    message.usage = usage_of(body.get("usage"))
    message.done = True
    choices = body.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    if not isinstance(choice, dict):
        return message
    message.finish = finish_reason(choice.get("finish_reason"))
    answer = choice.get("message")
    answer = answer if isinstance(answer, dict) else {}
    reasoning = answer.get("reasoning_content") or answer.get("reasoning")
    if reasoning and isinstance(reasoning, str):
        message.blocks.append(Block("reasoning", reasoning))
    for key in ("content", "refusal"):
        text = answer.get(key)
        if text and isinstance(text, str):
            message.blocks.append(Block("text", text))
    calls = answer.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        message.blocks.append(
            tool_call_block(function.get("arguments"), call.get("id"), function.get("name"))
        )
    return message


def answer_from_message(message: Message, *, created: int | None = None) -> dict[str, Any]:
    """A neutral `Message` as a `chat.completion` (an error as OpenAI's error body)."""
    if message.error is not None:
        error = message.error
        return openai_error_body(error.status, error.message, code=error.code)
    texts = [block.text for block in message.blocks if block.kind == "text"]
    calls = [
        {
            "id": block.call_id,
            "type": "function",
            "function": {"name": block.name, "arguments": block.text},
        }
        for block in message.blocks
        if block.kind == "tool_call"
    ]
    answer: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts else None,
        "refusal": None,
    }
    if calls:
        answer["tool_calls"] = calls
    body: dict[str, Any] = {
        "id": chat_id(message.id),
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": message.model,
        "choices": [
            {
                "index": 0,
                "message": answer,
                "logprobs": None,
                "finish_reason": message.finish or "stop",
            }
        ],
    }
    if message.usage is not None:
        body["usage"] = usage_body(message.usage)
    return body
