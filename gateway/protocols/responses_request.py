"""Responses requests to and from Chat requests (the pivot of `gateway.protocols.requests`).

Responses -> Chat: `instructions` and `input` items become messages (function calls join
the assistant turn they belong to, their outputs become tool messages, reasoning items the
pivot's `PIVOT_REASONING`), function tools, `tool_choice`, `reasoning.effort`,
`text.format` and `max_output_tokens` their Chat equivalents. Chat -> Responses: the
reverse, with `store: false` (the gateway relays; nothing should stay stored upstream).
What the other API cannot say is refused naming the field (see `requests`).
"""

from __future__ import annotations

from typing import Any

from gateway.protocols.request_parts import (
    PIVOT_REASONING,
    SHARED_PARAMS,
    chat_function,
    chat_text,
    chat_tool_calls,
    image_source,
    invalid,
    list_of,
    part_text,
    positive,
    refuse,
    refuse_chat_only,
    string,
    thinking_budget,
    tool_arguments,
)

# --- Responses -> Chat --------------------------------------------------------------------

_RESPONSES_STATEFUL = ("previous_response_id", "conversation", "prompt")


def chat_from_responses(body: dict[str, Any], upstream: str = "chat") -> dict[str, Any]:
    """A Responses request as a Chat request (the pivot: may carry `PIVOT_REASONING`)."""
    for param in _RESPONSES_STATEFUL:
        if body.get(param) is not None:
            raise invalid(
                param,
                f"`{param}` needs responses stored by the upstream; this model's upstream "
                f"speaks the {upstream} API, which stores none: send the whole conversation "
                "in `input`",
            )
    if body.get("store") is True:
        raise invalid(
            "store", f"the upstream's {upstream} API stores no responses: set `store` to false"
        )
    if body.get("background") is True:
        raise invalid("background", f"the upstream's {upstream} API has no background responses")
    refuse(body, upstream, "max_tool_calls", "top_logprobs")
    out: dict[str, Any] = {"model": body.get("model")}
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        messages.append({"role": "system", "content": string(instructions, "instructions")})
    given = body.get("input")
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
    else:
        messages.extend(_chat_messages(list_of(given, "input")))
    out["messages"] = messages
    max_tokens = positive(body, "max_output_tokens")
    if max_tokens is not None:
        out["max_completion_tokens"] = max_tokens
    for param in SHARED_PARAMS:
        if body.get(param) is not None:
            out[param] = body[param]
    tools = body.get("tools")
    if tools:
        out["tools"] = [
            _chat_tool(tool, f"tools[{k}]") for k, tool in enumerate(list_of(tools, "tools"))
        ]
    choice = body.get("tool_choice")
    if choice is not None:
        out["tool_choice"] = _chat_tool_choice(choice)
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort") is not None:
        out["reasoning_effort"] = reasoning["effort"]
    text = body.get("text")
    if isinstance(text, dict):
        fmt = text.get("format")
        if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
            out["response_format"] = _chat_response_format(fmt)
        if text.get("verbosity") is not None:
            out["verbosity"] = text["verbosity"]
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    if upstream == "messages":
        _check_for_messages(body, out)
    return out


def _check_for_messages(body: dict[str, Any], pivot: dict[str, Any]) -> None:
    """What the Chat -> Messages step would refuse, refused here under the names the
    Responses client used (that step names Chat's fields)."""
    text = body.get("text")
    if isinstance(text, dict):
        fmt = text.get("format")
        if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
            raise invalid("text.format", "the upstream's messages API has no output formats")
        if text.get("verbosity") not in (None, "medium"):
            raise invalid("text.verbosity", "the upstream's messages API has no verbosity")
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict):
        max_tokens = pivot.get("max_completion_tokens")
        thinking_budget(reasoning.get("effort"), max_tokens, "reasoning.effort")
    items = body.get("input")
    for i, item in enumerate(items if isinstance(items, list) else ()):
        if not isinstance(item, dict):
            continue
        if item.get("type") == "function_call":
            tool_arguments(item.get("arguments"), f"input[{i}].arguments")
        content = item.get("content")
        for j, part in enumerate(content if isinstance(content, list) else ()):
            if isinstance(part, dict) and part.get("type") == "input_image":
                where = f"input[{i}].content[{j}].image_url"
                image_source(string(part.get("image_url"), where), where)


def _chat_messages(items: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    reasoning: list[dict[str, Any]] = []
    """Reasoning items waiting for the assistant turn they belong to."""

    def assistant(content: str | None) -> dict[str, Any]:
        # Each assistant message item is a Chat assistant message of its own (Chat takes
        # several in a row; joining their texts would change them); reasoning items go
        # with the turn that follows them.
        nonlocal reasoning
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if reasoning:
            message[PIVOT_REASONING] = reasoning
            reasoning = []
        out.append(message)
        return message

    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise invalid(where, f"`{where}` must be an object")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role == "assistant":
                assistant(_output_text(item.get("content"), f"{where}.content"))
            elif role in ("user", "system", "developer"):
                out.append(
                    {
                        "role": role,
                        "content": _input_content(item.get("content"), f"{where}.content", role),
                    }
                )
            else:
                raise invalid(f"{where}.role", f"role {role!r} is not supported")
        elif kind == "function_call":
            call = {
                "id": string(item.get("call_id"), f"{where}.call_id"),
                "type": "function",
                "function": {
                    "name": string(item.get("name"), f"{where}.name"),
                    "arguments": string(item.get("arguments", ""), f"{where}.arguments"),
                },
            }
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and not reasoning:
                last.setdefault("tool_calls", []).append(call)
            else:
                assistant(None)["tool_calls"] = [call]
        elif kind == "function_call_output":
            output = item.get("output")
            if isinstance(output, list):
                output = "".join(
                    part_text(part, f"{where}.output[{j}]", ("input_text", "output_text"))
                    for j, part in enumerate(output)
                )
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": string(item.get("call_id"), f"{where}.call_id"),
                    "content": string(output, f"{where}.output"),
                }
            )
        elif kind == "reasoning":
            texts = [
                part["text"]
                for key in ("summary", "content")
                for part in item.get(key) or ()
                if isinstance(part, dict) and isinstance(part.get("text"), str)
            ]
            signature = item.get("encrypted_content")
            reasoning.append(
                {
                    "text": "\n\n".join(texts),
                    "signature": signature if isinstance(signature, str) else None,
                    "redacted": False,
                }
            )
        else:
            raise invalid(
                f"{where}.type",
                f"input items of type {kind!r} cannot be translated (item_reference needs "
                "stored items; built-in tool calls need the tool)",
            )
    return out


def _output_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    return "".join(
        part_text(part, f"{where}[{j}]", ("output_text", "refusal", "input_text"))
        for j, part in enumerate(list_of(content, where))
    )


def _input_content(content: Any, where: str, role: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(list_of(content, where)):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "input_image" and role == "user":
            url = part.get("image_url")
            if not isinstance(url, str):
                raise invalid(
                    f"{at}.image_url",
                    "only images given by `image_url` can be translated (no file_id)",
                )
            image: dict[str, Any] = {"url": url}
            if part.get("detail") not in (None, "auto"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            parts.append({"type": "text", "text": part_text(part, at, ("input_text",))})
    if role != "user":
        return "".join(part["text"] for part in parts)
    return parts


def _chat_tool(tool: Any, where: str) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise invalid(
            f"{where}.type", f"tools of type {kind!r} cannot be translated: only function tools"
        )
    function: dict[str, Any] = {"name": string(tool.get("name"), f"{where}.name")}
    for key in ("description", "parameters", "strict"):
        if tool.get(key) is not None:
            function[key] = tool[key]
    return {"type": "function", "function": function}


def _chat_tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {
            "type": "function",
            "function": {"name": string(choice.get("name"), "tool_choice.name")},
        }
    raise invalid("tool_choice", '`tool_choice` must be "auto", "none", "required" or a function')


def _chat_response_format(fmt: dict[str, Any]) -> dict[str, Any]:
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    raise invalid("text.format.type", f"text format {fmt.get('type')!r} cannot be translated")


# --- Chat -> Responses --------------------------------------------------------------------


def responses_from_chat(body: dict[str, Any]) -> dict[str, Any]:
    """A Chat request (or the pivot) as a Responses request."""
    refuse_chat_only(body, "responses")
    if body.get("stop"):
        raise invalid("stop", "the upstream's responses API has no stop sequences")
    out: dict[str, Any] = {"model": body.get("model")}
    items: list[dict[str, Any]] = []
    for i, message in enumerate(list_of(body.get("messages"), "messages")):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise invalid(where, f"`{where}` must be an object")
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer", "user"):
            items.append(
                {"role": role, "content": _responses_content(content, f"{where}.content", role)}
            )
        elif role == "assistant":
            text = chat_text(content, f"{where}.content")
            if text:
                items.append({"role": "assistant", "content": text})
            for call_id, name, arguments, at in chat_tool_calls(message, where):
                items.append(
                    {
                        "type": "function_call",
                        "call_id": call_id,
                        "name": name,
                        "arguments": string(arguments or "", f"{at}.function.arguments"),
                    }
                )
        elif role == "tool":
            items.append(
                {
                    "type": "function_call_output",
                    "call_id": string(message.get("tool_call_id"), f"{where}.tool_call_id"),
                    "output": chat_text(content, f"{where}.content"),
                }
            )
        else:
            raise invalid(f"{where}.role", f"role {role!r} is not supported")
    out["input"] = items
    max_tokens = positive(body, "max_completion_tokens") or positive(body, "max_tokens")
    if max_tokens is not None:
        out["max_output_tokens"] = max_tokens
    for param in SHARED_PARAMS:
        if body.get(param) is not None:
            out[param] = body[param]
    tools = body.get("tools")
    if tools:
        out["tools"] = [
            _responses_tool(tool, f"tools[{k}]") for k, tool in enumerate(list_of(tools, "tools"))
        ]
    choice = body.get("tool_choice")
    if choice is not None:
        if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
            name = string(choice["function"].get("name"), "tool_choice.function.name")
            choice = {"type": "function", "name": name}
        out["tool_choice"] = choice
    if body.get("reasoning_effort") is not None:
        out["reasoning"] = {"effort": body["reasoning_effort"]}
    text_config: dict[str, Any] = {}
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        text_config["format"] = {"type": "json_schema", **(fmt.get("json_schema") or {})}
    elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
        text_config["format"] = {"type": "json_object"}
    if body.get("verbosity") is not None:
        text_config["verbosity"] = body["verbosity"]
    if text_config:
        out["text"] = text_config
    out["store"] = False  # the gateway relays; nothing it sends should stay stored upstream
    if body.get("stream"):
        out["stream"] = True
    return out


def _responses_content(content: Any, where: str, role: str) -> str | list[dict[str, Any]]:
    if content is None or isinstance(content, str):
        return content or ""
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(list_of(content, where)):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image_url" and role == "user":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            entry: dict[str, Any] = {
                "type": "input_image",
                "image_url": string(url, f"{at}.image_url.url"),
            }
            entry["detail"] = image.get("detail") or "auto" if isinstance(image, dict) else "auto"
            parts.append(entry)
        else:
            parts.append({"type": "input_text", "text": part_text(part, at, ("text",))})
    return parts


def _responses_tool(tool: Any, where: str) -> dict[str, Any]:
    function = chat_function(tool, where)
    out: dict[str, Any] = {
        "type": "function",
        "name": string(function.get("name"), f"{where}.function.name"),
    }
    for key in ("description", "parameters", "strict"):
        if function.get(key) is not None:
            out[key] = function[key]
    return out
