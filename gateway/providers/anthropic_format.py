"""OpenAI chat.completions JSON to Anthropic Messages JSON and back (bodies, not streams).

`messages_body` translates the request: `system` / `developer` messages become the
top-level `system` string, tool calls become `tool_use` blocks and `tool` messages
`tool_result` blocks, consecutive same-role messages are merged (Anthropic requires
user / assistant alternation), `tools` / `tool_choice` / `parallel_tool_calls` map to
their Anthropic equivalents and `max_tokens` is always set (Anthropic requires it).

A request Anthropic cannot honour is refused with `InvalidRequest` (400) naming the
parameter: `n` other than 1, content parts other than text and images, tool arguments that
are not a JSON object. Parameters with no Anthropic equivalent are dropped silently, as
Anthropic's own OpenAI-compatibility layer does: `frequency_penalty`, `presence_penalty`,
`logit_bias`, `logprobs`, `top_logprobs`, `seed`, `response_format`, `stream_options`
(Anthropic always reports usage), `store`, `metadata`, `service_tier`, `modalities`,
`audio`, `prediction`, `reasoning_effort`, `web_search_options`, a message's `name`, a
function's `strict`, and anything else not named above. `temperature` above 1 (OpenAI
allows up to 2) is capped at 1, Anthropic's maximum.

`chat_completion` translates a non-streaming answer into a `chat.completion`, and
`openai_error_body` an Anthropic error body into OpenAI's error shape.

Deliberately not here: the stream translation and HTTP (see `gateway.providers.anthropic`),
and validating what Anthropic validates itself (its 400 reaches the client OpenAI-shaped).
"""

from __future__ import annotations

import re
import time
from typing import Any

import orjson

from gateway.errors import InvalidRequest
from gateway.providers.base import Usage

DEFAULT_MAX_TOKENS = 4096
"""Anthropic requires `max_tokens`; OpenAI clients usually leave it out."""

_DATA_URL = re.compile(r"data:([^;,]+);base64,(.*)", re.DOTALL)

Block = dict[str, Any]

_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def messages_body(body: dict[str, Any], model: str, *, stream: bool) -> dict[str, Any]:
    """The Anthropic Messages body for the client's chat.completions `body`."""
    n = body.get("n")
    if n is not None and n != 1:
        raise _invalid("n", "provider type anthropic returns one choice: `n` must be 1")
    system, messages = _messages(body.get("messages"))
    out: dict[str, Any] = {"model": model, "max_tokens": _max_tokens(body)}
    if system:
        out["system"] = system
    out["messages"] = messages
    tools = body.get("tools")
    if tools:
        out["tools"] = _tools(tools)
        choice = _tool_choice(body.get("tool_choice"))
        if body.get("parallel_tool_calls") is False and choice.get("type") != "none":
            choice["disable_parallel_tool_use"] = True
        out["tool_choice"] = choice
    temperature = body.get("temperature")
    if isinstance(temperature, int | float) and not isinstance(temperature, bool):
        out["temperature"] = min(temperature, 1)
    elif temperature is not None:
        out["temperature"] = temperature  # Anthropic's own 400 names the problem
    if body.get("top_p") is not None:
        out["top_p"] = body["top_p"]
    stop = body.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif stop:
        out["stop_sequences"] = stop
    user = body.get("user")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    out["stream"] = stream
    return out


def _max_tokens(body: dict[str, Any]) -> int:
    for param in ("max_completion_tokens", "max_tokens"):
        value = body.get(param)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _invalid(param, f"`{param}` must be a positive integer")
        return value
    return DEFAULT_MAX_TOKENS


def _messages(messages: Any) -> tuple[str, list[dict[str, Any]]]:
    if not isinstance(messages, list):
        raise _invalid("messages", "`messages` must be a list of messages")
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _invalid(where, f"`{where}` must be an object")
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            text = _system_text(content, f"{where}.content")
            if text:
                system.append(text)
            continue
        if role == "user":
            blocks = _blocks(content, f"{where}.content", images=True)
        elif role == "assistant":
            blocks = _blocks(content, f"{where}.content", images=False)
            blocks.extend(_tool_uses(message.get("tool_calls"), f"{where}.tool_calls"))
        elif role == "tool":
            blocks, role = [_tool_result(message, where)], "user"
        else:
            raise _invalid(
                f"{where}.role",
                f"role {role!r} is not supported by provider type anthropic "
                "(use system, developer, user, assistant or tool)",
            )
        if not blocks:
            continue  # Anthropic refuses empty messages; an empty one says nothing anyway
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)  # Anthropic requires alternating roles
        else:
            out.append({"role": role, "content": blocks})
    return "\n\n".join(system), out


def _system_text(content: Any, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise _invalid(where, f"`{where}` must be a string or a list of text parts")
    texts: list[str] = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text":
            raise _invalid(f"{where}[{j}]", "system and developer messages take text parts only")
        texts.append(_text(part, f"{where}[{j}]"))
    return "\n\n".join(text for text in texts if text)


def _blocks(content: Any, where: str, *, images: bool) -> list[Block]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise _invalid(where, f"`{where}` must be a string or a list of content parts")
    blocks: list[Block] = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = _text(part, at)
        elif kind == "refusal" and not images:  # an assistant turn the client replays
            text = part.get("refusal") if isinstance(part.get("refusal"), str) else ""
        elif kind == "image_url" and images:
            blocks.append(_image(part.get("image_url"), f"{at}.image_url"))
            continue
        else:
            raise _invalid(at, f"content part type {kind!r} is not supported here")
        if text:
            blocks.append({"type": "text", "text": text})
    return blocks


def _text(part: dict[str, Any], where: str) -> str:
    text = part.get("text")
    if not isinstance(text, str):
        raise _invalid(f"{where}.text", f"`{where}.text` must be a string")
    return text


def _image(image: Any, where: str) -> Block:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise _invalid(f"{where}.url", f"`{where}.url` must be a string")
    if url.startswith("data:"):
        match = _DATA_URL.fullmatch(url)
        if match is None:
            raise _invalid(
                f"{where}.url", "an image data URL must be base64 (data:TYPE;base64,...)"
            )
        media_type, data = match.groups()
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise _invalid(f"{where}.url", "an image URL must be an http(s) or a base64 data: URL")


def _tool_uses(tool_calls: Any, where: str) -> list[Block]:
    if not tool_calls:
        return []
    if not isinstance(tool_calls, list):
        raise _invalid(where, f"`{where}` must be a list")
    blocks: list[Block] = []
    for j, call in enumerate(tool_calls):
        at = f"{where}[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _invalid(at, f"`{at}` must be a function call with a name")
        call_id = call.get("id") if isinstance(call, dict) else None
        if not isinstance(call_id, str) or not call_id:
            raise _invalid(f"{at}.id", f"`{at}.id` must be a non-empty string")
        blocks.append(
            {
                "type": "tool_use",
                "id": call_id,
                "name": function["name"],
                "input": _arguments(function.get("arguments"), f"{at}.function.arguments"),
            }
        )
    return blocks


def _arguments(arguments: Any, where: str) -> dict[str, Any]:
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}  # a function without parameters; OpenAI sends "" or "{}"
    if not isinstance(arguments, str):
        raise _invalid(where, f"`{where}` must be a JSON string")
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        raise _invalid(where, f"`{where}` is not valid JSON") from None
    if not isinstance(value, dict):
        raise _invalid(where, f"`{where}` must be a JSON object")
    return value


def _tool_result(message: dict[str, Any], where: str) -> Block:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise _invalid(f"{where}.tool_call_id", f"`{where}.tool_call_id` must be a string")
    block: Block = {"type": "tool_result", "tool_use_id": call_id}
    content = _blocks(message.get("content"), f"{where}.content", images=True)
    if content:
        block["content"] = content
    return block


def _tools(tools: Any) -> list[Block]:
    if not isinstance(tools, list):
        raise _invalid("tools", "`tools` must be a list")
    out: list[Block] = []
    for k, tool in enumerate(tools):
        at = f"tools[{k}]"
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise _invalid(at, "provider type anthropic takes tools of type function only")
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _invalid(f"{at}.function", f"`{at}.function` must name the function")
        parameters = function.get("parameters")
        entry: Block = {"name": function["name"]}
        if isinstance(function.get("description"), str):
            entry["description"] = function["description"]
        entry["input_schema"] = (
            parameters if isinstance(parameters, dict) else {"type": "object", "properties": {}}
        )
        out.append(entry)
    return out


def _tool_choice(choice: Any) -> dict[str, Any]:
    if choice is None or choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return {"type": "tool", "name": function["name"]}
    raise _invalid(
        "tool_choice",
        '`tool_choice` must be "auto", "required", "none" or '
        '{"type": "function", "function": {"name": ...}}',
    )


def _invalid(param: str, message: str) -> InvalidRequest:
    return InvalidRequest(message, status=400, param=param)


# --- the answer ---------------------------------------------------------------------------

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
