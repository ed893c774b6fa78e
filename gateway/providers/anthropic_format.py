"""Anthropic Messages answers as OpenAI chat.completions JSON (bodies, not streams).

`chat_completion` translates a non-streaming answer into a `chat.completion`, and
`openai_error_body` an Anthropic error body into OpenAI's error shape; the usage readers
(`prompt_tokens`, `cache_counts`) and `finish_reason` serve the stream translation too.

Deliberately not here: the request, which `gateway.protocols` translates for every client
API alike (`messages_from_chat`), the stream translation and HTTP (see
`gateway.providers.anthropic`).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.providers.base import Usage

_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


INPUT_KEYS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def prompt_tokens(usage: Any) -> int:
    """Anthropic counts cached input apart from `input_tokens`; OpenAI's prompt_tokens
    includes it, and so does the charge."""
    if not isinstance(usage, dict):
        return 0
    return sum(as_int(usage.get(key)) for key in INPUT_KEYS)


def cache_counts(usage: Any, into: Usage) -> None:
    """Anthropic's cache reads and writes (a part of `prompt_tokens`), priced apart."""
    if isinstance(usage, dict):
        into.cached_tokens = as_int(usage.get("cache_read_input_tokens"))
        into.cache_write_tokens = as_int(usage.get("cache_creation_input_tokens"))


def as_int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def finish_reason(stop_reason: Any) -> str:
    # pause_turn and reasons added later end this answer as far as the client can tell.
    return _FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def chat_completion(message: dict[str, Any]) -> tuple[dict[str, Any], Usage]:
    """A Messages answer as OpenAI's `chat.completion` (and its usage)."""
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    content = message.get("content")
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            tool_calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": arguments},
                }
            )
    answer: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if tool_calls:
        answer["tool_calls"] = tool_calls
    raw_usage = message.get("usage")
    usage = Usage(
        prompt_tokens=prompt_tokens(raw_usage),
        completion_tokens=as_int(raw_usage.get("output_tokens"))
        if isinstance(raw_usage, dict)
        else 0,
    )
    cache_counts(raw_usage, usage)
    body = {
        "id": "chatcmpl-" + str(message.get("id") or "anthropic"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": message.get("model") or "",
        "choices": [
            {
                "index": 0,
                "message": answer,
                "logprobs": None,
                "finish_reason": finish_reason(message.get("stop_reason")),
            }
        ],
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        },
    }
    return body, usage


def openai_error_body(body: bytes) -> bytes:
    """Anthropic's `{"type": "error", "error": {"type", "message"}}` in OpenAI's shape, so
    `error_from_status` passes the upstream's own words on; anything else unchanged."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return body
    kind = error.get("type")
    return orjson.dumps(
        {
            "error": {
                "message": error["message"],
                "type": kind if isinstance(kind, str) else "invalid_request_error",
                "param": None,
                "code": None,
            }
        }
    )
