"""A reasoning model's answer in OpenAI's Responses API, written out by hand.

The fake upstream's other Responses answers are its Chat scenarios run through the
gateway's own encoder; this one is not, so that a pass-through test checks the gateway
against OpenAI's wire format (the API reference and openai-python's `ResponseReasoningItem`,
`ResponseReasoningSummaryPartAddedEvent`, `ResponseReasoningSummaryTextDeltaEvent`, ...)
rather than against itself. The stream: `response.created`, `response.in_progress`, a
`reasoning` item with two summary parts (each `reasoning_summary_part.added`, text deltas,
`reasoning_summary_text.done`, `reasoning_summary_part.done`), its `output_item.done`
carrying `encrypted_content` when the request's `include` asks for
`reasoning.encrypted_content`, then a message with `n` text deltas, and
`response.completed` with `output_tokens_details.reasoning_tokens`.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from typing import Any

import orjson

SUMMARY = (("**Planning** ", "the answer."), ("Checking ", "the facts."))
"""The reasoning summary's parts, each as its deltas."""

REASONING_ID = "rs_fake0123456789"
MESSAGE_ID = "msg_fake0123456789"


def encrypted_content(size: int = 1536) -> str:
    """An opaque blob shaped like OpenAI's (Fernet-style base64 with `+`, `/` and `=`)."""
    raw = b"".join(hashlib.sha256(b"%d" % i).digest() for i in range(size // 32 + 1))
    return "gAAAAAB" + base64.b64encode(raw[:size]).decode()


def wants_encrypted(request: dict[str, Any]) -> bool:
    include = request.get("include")
    return isinstance(include, list) and "reasoning.encrypted_content" in include


def _reasoning_item(request: dict[str, Any], done: bool) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": REASONING_ID,
        "type": "reasoning",
        "summary": (
            [{"type": "summary_text", "text": "".join(part)} for part in SUMMARY] if done else []
        ),
    }
    if done and wants_encrypted(request):
        item["encrypted_content"] = encrypted_content()
    return item


def _message_item(text: str, done: bool) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {
        "id": MESSAGE_ID,
        "type": "message",
        "status": "completed" if done else "in_progress",
        "role": "assistant",
        "content": content if done else [],
    }


def _usage(output_tokens: int, reasoning_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": 11,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": 11 + output_tokens,
    }


def reasoning_answer(
    request: dict[str, Any], tokens: list[str], reasoning_tokens: int, status: str = "completed"
) -> dict[str, Any]:
    """The non-streamed Response (and the `response` of the stream's last event)."""
    return {
        "id": "resp_fake0123456789",
        "object": "response",
        "created_at": 1,
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": request.get("max_output_tokens"),
        "model": request.get("model"),
        "output": (
            [_reasoning_item(request, True), _message_item("".join(tokens), True)]
            if status == "completed"
            else []
        ),
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": "medium", "summary": "detailed"},
        "store": request.get("store", True),
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "usage": (
            _usage(len(tokens) + reasoning_tokens, reasoning_tokens)
            if status == "completed"
            else None
        ),
    }


def reasoning_events(
    request: dict[str, Any], tokens: list[str], reasoning_tokens: int, think: Any = None
) -> Iterator[Any]:
    """The stream, one SSE event per item, `sequence_number` from 0; `think` (a marker of
    the fake's, when given) where the model reasons silently, after its reasoning item
    opened and before the summary."""
    seq = 0

    def ev(kind: str, **fields: Any) -> bytes:
        nonlocal seq
        data = orjson.dumps({"type": kind, **fields, "sequence_number": seq})
        seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"

    pending = reasoning_answer(request, tokens, reasoning_tokens, status="in_progress")
    yield ev("response.created", response=pending)
    yield ev("response.in_progress", response=pending)
    at = {"item_id": REASONING_ID, "output_index": 0}
    yield ev("response.output_item.added", output_index=0, item=_reasoning_item(request, False))
    if think is not None:
        yield think
    for index, part in enumerate(SUMMARY):
        text = "".join(part)
        empty = {"type": "summary_text", "text": ""}
        yield ev("response.reasoning_summary_part.added", **at, summary_index=index, part=empty)
        for delta in part:
            yield ev(
                "response.reasoning_summary_text.delta",
                **at,
                summary_index=index,
                delta=delta,
            )
        yield ev("response.reasoning_summary_text.done", **at, summary_index=index, text=text)
        whole = {"type": "summary_text", "text": text}
        yield ev("response.reasoning_summary_part.done", **at, summary_index=index, part=whole)
    yield ev("response.output_item.done", output_index=0, item=_reasoning_item(request, True))
    text = "".join(tokens)
    yield ev("response.output_item.added", output_index=1, item=_message_item("", False))
    msg = {"item_id": MESSAGE_ID, "output_index": 1, "content_index": 0}
    part: dict[str, Any] = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    yield ev("response.content_part.added", **msg, part=part)
    for token in tokens:
        yield ev("response.output_text.delta", **msg, delta=token, logprobs=[])
    yield ev("response.output_text.done", **msg, text=text, logprobs=[])
    yield ev("response.content_part.done", **msg, part={**part, "text": text})
    yield ev("response.output_item.done", output_index=1, item=_message_item(text, True))
    done = reasoning_answer(request, tokens, reasoning_tokens)
    yield ev("response.completed", response=done)
