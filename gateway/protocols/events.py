"""The neutral stream events every API is decoded to and encoded from, and the final message.

A translated stream is `decode(upstream API) -> neutral events -> encode(client API)`:
three decoders and three encoders instead of six pairwise translators. The events are
NamedTuples (one is built per upstream event; a tuple is the cheapest object Python builds)
and carry only what at least two of the APIs can say: text, reasoning (with its opaque
signature), tool calls with streamed arguments, usage, a finish reason, errors.

The contract a decoder keeps and an encoder relies on:
- `Start` comes first, once; then blocks, one at a time: a block opens (`TextStart`,
  `ReasoningStart`, `ToolCallStart`), gets its deltas and closes (`BlockEnd`) before the
  next one opens. `block` numbers are the decoder's own, unique within a stream; each
  encoder renumbers the blocks the way its API does (Messages content index, Responses
  output_index, Chat tool_calls index).
- `Usage` may come any number of times; each one holds cumulative counts and replaces the
  previous one. `Finish` comes at most once, after the last block.
- The stream ends with exactly one of `Done` (the upstream finished) or `Error` (it failed:
  whatever came before it is not a complete answer).

`Reassembler` builds the final `Message` from the events: the answer a client of any API
would have once its SDK accumulated the stream, in neutral terms. The non-streamed answer
converters of each API go through the same `Message`.

Deliberately not here: JSON, bytes or any one API's names (see `chat`, `responses`,
`messages` in this package).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]
"""Why the answer ended, in Chat's vocabulary: `stop` (the model finished, or hit a stop
sequence), `length` (the output token limit), `tool_calls` (it wants tools run),
`content_filter` (refused or filtered)."""


class TokenUsage(NamedTuple):
    input_tokens: int
    """All input tokens, cached ones included (OpenAI's count; Anthropic's `input_tokens`
    excludes cache reads and writes, its decoder adds them)."""
    output_tokens: int
    """All output tokens, reasoning included."""
    cached_input_tokens: int = 0
    """Input tokens read from the provider's prompt cache (part of `input_tokens`)."""
    cache_write_tokens: int = 0
    """Input tokens written to the prompt cache (part of `input_tokens`)."""
    reasoning_tokens: int = 0
    """Output tokens spent on reasoning (part of `output_tokens`)."""


class Start(NamedTuple):
    id: str
    """The upstream's id of the answer, as it sent it (`chatcmpl-...`, `resp_...`, `msg_...`)."""
    model: str
    usage: TokenUsage | None = None
    """Usage known at the start (Anthropic reports its input tokens there)."""


class TextStart(NamedTuple):
    block: int


class TextDelta(NamedTuple):
    block: int
    text: str


class ReasoningStart(NamedTuple):
    block: int


class ReasoningDelta(NamedTuple):
    block: int
    text: str
    signature: str | None = None
    """Opaque proof of the reasoning (Anthropic's `signature`, OpenAI's `encrypted_content`),
    which a client sends back on the next turn; replaces any earlier one of the block."""


class ToolCallStart(NamedTuple):
    block: int
    call_id: str
    name: str


class ToolArgsDelta(NamedTuple):
    block: int
    partial_json: str


class BlockEnd(NamedTuple):
    block: int


class Usage(NamedTuple):
    usage: TokenUsage


class Finish(NamedTuple):
    reason: FinishReason


class Done(NamedTuple):
    """The upstream finished its answer (Chat's `[DONE]`, `message_stop`,
    `response.completed` / `response.incomplete`)."""


class Error(NamedTuple):
    status: int
    """The HTTP status the failure would have had (mid-stream errors have none of their
    own: derived from the error's type), which each API names its own way."""
    message: str
    code: str | None = None
    """OpenAI's `code` when the upstream gave one; kept only for the OpenAI encoders."""


Event = (
    Start
    | TextStart
    | TextDelta
    | ReasoningStart
    | ReasoningDelta
    | ToolCallStart
    | ToolArgsDelta
    | BlockEnd
    | Usage
    | Finish
    | Done
    | Error
)

DONE = Done()

new_event = tuple.__new__
"""Builds an event from a tuple without the NamedTuple's Python-level `__new__` (half the
cost): `new_event(TextDelta, (block, text))`, for the per-token events of the decoders.
Every field must be given."""


# --- the final message --------------------------------------------------------------------

BlockKind = Literal["text", "reasoning", "tool_call"]


@dataclass
class Block:
    kind: BlockKind
    text: str = ""
    """The text, the reasoning, or a tool call's arguments (a JSON string)."""
    signature: str | None = None
    call_id: str = ""
    name: str = ""


def tool_call_block(arguments: Any, call_id: Any, name: Any) -> Block:
    """A tool call's `Block` from the fields of a non-streamed answer as parsed from JSON,
    where any of them may be missing or of the wrong type: arguments that are not a string
    become "", an id or name is made a string ("" when missing)."""
    return Block(
        "tool_call",
        arguments if isinstance(arguments, str) else "",
        call_id=str(call_id or ""),
        name=str(name or ""),
    )


@dataclass
class Message:
    id: str = ""
    model: str = ""
    blocks: list[Block] = field(default_factory=list)
    finish: FinishReason | None = None
    usage: TokenUsage | None = None
    error: Error | None = None
    done: bool = False
    """The stream ended with `Done` (a complete answer)."""


class Reassembler:
    """Neutral events in, the final `Message` out (`message`)."""

    __slots__ = ("_open", "message")

    def __init__(self) -> None:
        self.message = Message()
        self._open: dict[int, Block] = {}

    def feed(self, event: Event) -> None:
        message = self.message
        match event:
            case TextDelta(number, text) | ToolArgsDelta(number, text):
                self._open[number].text += text
            case ReasoningDelta(number, text, signature):
                block = self._open[number]
                block.text += text
                if signature is not None:
                    block.signature = signature
            case TextStart(number):
                self._add(number, Block("text"))
            case ReasoningStart(number):
                self._add(number, Block("reasoning"))
            case ToolCallStart(number, call_id, name):
                self._add(number, Block("tool_call", call_id=call_id, name=name))
            case BlockEnd(number):
                self._open.pop(number, None)
            case Start(answer_id, model, usage):
                message.id, message.model = answer_id, model
                if usage is not None:
                    message.usage = usage
            case Usage(usage):
                message.usage = usage
            case Finish(reason):
                message.finish = reason
            case Done():
                message.done = True
            case Error():
                message.error = event

    def _add(self, number: int, block: Block) -> None:
        self._open[number] = block
        self.message.blocks.append(block)


def events_of(message: Message) -> list[Event]:
    """The stream of a finished `Message`: how a non-streamed answer becomes events."""
    out: list[Event] = [Start(message.id, message.model)]
    for number, block in enumerate(message.blocks):
        if block.kind == "text":
            out.append(TextStart(number))
            if block.text:
                out.append(TextDelta(number, block.text))
        elif block.kind == "reasoning":
            out.append(ReasoningStart(number))
            if block.text or block.signature is not None:
                out.append(ReasoningDelta(number, block.text, block.signature))
        else:
            out.append(ToolCallStart(number, block.call_id, block.name))
            if block.text:
                out.append(ToolArgsDelta(number, block.text))
        out.append(BlockEnd(number))
    if message.finish is not None:
        out.append(Finish(message.finish))
    if message.usage is not None:
        out.append(Usage(message.usage))
    out.append(message.error if message.error is not None else DONE)
    return out
