"""Messages requests to and from Chat requests (the pivot of `gateway.protocols.requests`).

Messages -> Chat: `system` becomes a system message, `tool_result` blocks tool messages
(placed first: Chat wants them right after the assistant's calls), `tool_use` blocks tool
calls, thinking blocks the pivot's `PIVOT_REASONING`, custom tools function tools,
`thinking` a reasoning effort.

Chat -> Messages (`messages_from_chat`) is the one such translator: provider type
`anthropic` uses it for Chat clients, the pivot for Responses clients. System and
developer messages become `system` (each message and each text part a paragraph),
consecutive same-role turns are merged and empty ones left out (Anthropic wants them
alternating and non-empty), tool calls become `tool_use` blocks, tool messages
`tool_result` blocks (images in them kept), `tools` / `tool_choice` /
`parallel_tool_calls: false` their Anthropic forms, `stop` `stop_sequences`, `user`
`metadata.user_id`, a `temperature` above 1 (OpenAI allows 2) is capped at 1, Anthropic's
maximum. `max_tokens` is always set (Anthropic requires it): the client's
`max_completion_tokens` or `max_tokens`, else 4096. `reasoning_effort` becomes a thinking
budget (`EFFORT_BUDGETS`) inside `max_tokens`: the client's limit must exceed it, and
without one the default is 4096 on top of it. One exception: a request whose last
assistant turn called tools without its thinking (a Chat client cannot hand it back)
goes without thinking, which Anthropic would otherwise refuse for that turn.

Refused, naming the field: `n` other than 1, penalties, `logit_bias`, `logprobs`,
`top_logprobs`, `response_format` other than text, `verbosity` other than medium,
`modalities` other than text, `audio`, `prediction`, `web_search_options`, the legacy
`functions`, content parts other than text and images (text and refusals for assistants),
tool arguments that are not a JSON object, tools that are not functions, a `tool_choice`
that forces a call with no `tools`. Each such field at its default (`n: 1`, a penalty of
0, `logprobs: false`...) passes. Dropped, as carrying no meaning for the answer (and as
Anthropic's own OpenAI compatibility layer drops them): `seed`, `store`, `metadata`,
`service_tier`, `stream_options` (Anthropic always reports usage), `prompt_cache_key`,
`safety_identifier`, a message's `name`, a function's `strict`, an image's `detail`, and
members neither API knows.
"""

from __future__ import annotations

from typing import Any

from gateway.protocols.request_parts import (
    CHAT_ONLY,
    DEFAULT_MAX_TOKENS,
    PIVOT_REASONING,
    chat_function,
    chat_text,
    chat_tool_calls,
    effort,
    image_source,
    invalid,
    json_text,
    list_of,
    part_text,
    positive,
    refuse,
    refuse_chat_only,
    string,
    thinking_budget,
    tool_arguments,
)

# --- Messages -> Chat ---------------------------------------------------------------------


def chat_from_messages(body: dict[str, Any], upstream: str = "chat") -> dict[str, Any]:
    """A Messages request as a Chat request (the pivot: may carry `PIVOT_REASONING`)."""
    refuse(
        body, upstream, "top_k", "container", "mcp_servers", "context_management", "output_format"
    )
    out: dict[str, Any] = {"model": body.get("model")}
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        if isinstance(system, list):
            system = "\n\n".join(
                _block_text(block, f"system[{j}]") for j, block in enumerate(system)
            )
        messages.append({"role": "system", "content": string(system, "system")})
    for i, message in enumerate(list_of(body.get("messages"), "messages")):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise invalid(where, f"`{where}` must be an object")
        role = message.get("role")
        content = message.get("content")
        if role not in ("user", "assistant"):
            raise invalid(f"{where}.role", f"role {role!r} is not supported (user or assistant)")
        if isinstance(content, str):
            messages.append({"role": role, "content": content})
        elif role == "user":
            messages.extend(_chat_user(list_of(content, f"{where}.content"), f"{where}.content"))
        else:
            messages.append(
                _chat_assistant(list_of(content, f"{where}.content"), f"{where}.content")
            )
    out["messages"] = messages
    out["max_completion_tokens"] = positive(body, "max_tokens") or DEFAULT_MAX_TOKENS
    for param in ("temperature", "top_p"):
        if body.get(param) is not None:
            out[param] = body[param]
    stop = body.get("stop_sequences")
    if stop:
        if upstream == "responses":
            raise invalid("stop_sequences", "the upstream's responses API has no stop sequences")
        out["stop"] = stop
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    tools = body.get("tools")
    if tools:
        out["tools"] = [
            _chat_tool_of_messages(tool, f"tools[{k}]")
            for k, tool in enumerate(list_of(tools, "tools"))
        ]
    choice = body.get("tool_choice")
    if choice is not None and not isinstance(choice, dict):
        raise invalid("tool_choice", "`tool_choice` must be an object with a `type`")
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "tool":
            out["tool_choice"] = {
                "type": "function",
                "function": {"name": string(choice.get("name"), "tool_choice.name")},
            }
        elif kind in ("auto", "any", "none"):
            out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
        else:
            raise invalid("tool_choice.type", f"tool_choice type {kind!r} is not supported")
        if choice.get("disable_parallel_tool_use") is True:
            out["parallel_tool_calls"] = False
    thinking = body.get("thinking")
    if isinstance(thinking, dict):
        if thinking.get("type") == "enabled":
            budget = thinking.get("budget_tokens")
            out["reasoning_effort"] = effort(budget if isinstance(budget, int) else 0)
        elif thinking.get("type") == "adaptive":
            out["reasoning_effort"] = "medium"
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _block_text(block: Any, where: str) -> str:
    if not isinstance(block, dict) or block.get("type") != "text":
        raise invalid(where, f"`{where}` must be a text block")
    return string(block.get("text"), f"{where}.text")


def _chat_user(blocks: list[Any], where: str) -> list[dict[str, Any]]:
    # Tool results become tool messages, which Chat wants right after the assistant's calls.
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        at = f"{where}[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": string(block.get("text"), f"{at}.text")})
        elif kind == "image":
            parts.append(
                {
                    "type": "image_url",
                    "image_url": {"url": _image_url(block.get("source"), f"{at}.source")},
                }
            )
        elif kind == "tool_result":
            content = block.get("content")
            if isinstance(content, list):
                content = "".join(
                    _block_text(part, f"{at}.content[{k}]") for k, part in enumerate(content)
                )
            results.append(
                {
                    "role": "tool",
                    "tool_call_id": string(block.get("tool_use_id"), f"{at}.tool_use_id"),
                    "content": string(content or "", f"{at}.content"),
                }
            )
        else:
            raise invalid(f"{at}.type", f"content block type {kind!r} cannot be translated")
    if parts:
        only_text = all(part["type"] == "text" for part in parts)
        user: Any = (
            "".join(part["text"] for part in parts) if only_text and len(parts) == 1 else parts
        )
        results.append({"role": "user", "content": user})
    return results


def _image_url(source: Any, where: str) -> str:
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64":
        media = string(source.get("media_type"), f"{where}.media_type")
        return f"data:{media};base64,{string(source.get('data'), f'{where}.data')}"
    if kind == "url":
        return string(source.get("url"), f"{where}.url")
    raise invalid(
        f"{where}.type", f"image source type {kind!r} cannot be translated (base64 or url)"
    )


def _chat_assistant(blocks: list[Any], where: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": None}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    reasoning: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        at = f"{where}[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(string(block.get("text"), f"{at}.text"))
        elif kind == "tool_use":
            given = block.get("input")
            calls.append(
                {
                    "id": string(block.get("id"), f"{at}.id"),
                    "type": "function",
                    "function": {
                        "name": string(block.get("name"), f"{at}.name"),
                        "arguments": json_text(
                            given if isinstance(given, dict) else {}, f"{at}.input"
                        ),
                    },
                }
            )
        elif kind == "thinking":
            reasoning.append(
                {
                    "text": string(block.get("thinking"), f"{at}.thinking"),
                    "signature": block.get("signature"),
                    "redacted": False,
                }
            )
        elif kind == "redacted_thinking":
            reasoning.append(
                {
                    "text": "",
                    "signature": string(block.get("data"), f"{at}.data"),
                    "redacted": True,
                }
            )
        else:
            raise invalid(f"{at}.type", f"content block type {kind!r} cannot be translated")
    if texts:
        message["content"] = "".join(texts)
    if calls:
        message["tool_calls"] = calls
    if reasoning:
        message[PIVOT_REASONING] = reasoning
    return message


def _chat_tool_of_messages(tool: Any, where: str) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type", "custom") != "custom":
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise invalid(where, f"server tools ({kind!r}) cannot be translated: only custom tools")
    function: dict[str, Any] = {"name": string(tool.get("name"), f"{where}.name")}
    if tool.get("description") is not None:
        function["description"] = tool["description"]
    function["parameters"] = tool.get("input_schema") or {"type": "object", "properties": {}}
    return {"type": "function", "function": function}


# --- Chat -> Messages ---------------------------------------------------------------------


def messages_from_chat(body: dict[str, Any], *, reasoning: bool = True) -> dict[str, Any]:
    """A Chat request (or the pivot) as a Messages request (the model and `stream` as the
    body says; the caller sets its own). `reasoning`: carry the pivot's earlier reasoning
    (`PIVOT_REASONING`) as thinking blocks; False for a Chat client's own body, where that
    key is nobody's and is ignored like any unknown member."""
    if not _NOT_MESSAGES.isdisjoint(body):
        _refuse_not_messages(body)
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(list_of(body.get("messages"), "messages")):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise invalid(where, f"`{where}` must be an object")
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            _system_texts(content, f"{where}.content", system)
            continue
        if role == "user":
            blocks = _anthropic_blocks(content, f"{where}.content")
        elif role == "assistant":
            blocks = _anthropic_assistant(message, where, reasoning)
        elif role == "tool":
            role = "user"
            blocks = [_tool_result(message, where)]
        else:
            raise invalid(
                f"{where}.role",
                f"role {role!r} is not supported (system, developer, user, assistant or tool)",
            )
        if not blocks:
            continue  # Anthropic refuses empty turns; an empty message says nothing anyway
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)  # Anthropic wants the roles alternating
        else:
            turns.append({"role": role, "content": blocks})
    limit = positive(body, "max_completion_tokens") if "max_completion_tokens" in body else None
    if limit is None:
        limit = positive(body, "max_tokens")
    effort = body.get("reasoning_effort")
    budget = None if effort is None else thinking_budget(effort, limit, "reasoning_effort")
    if limit is None:
        limit = DEFAULT_MAX_TOKENS if budget is None else DEFAULT_MAX_TOKENS + budget
    out: dict[str, Any] = {"model": body.get("model"), "max_tokens": limit}
    if system:
        out["system"] = "\n\n".join(system)
    out["messages"] = turns
    temperature = body.get("temperature")
    if isinstance(temperature, int | float) and not isinstance(temperature, bool):
        out["temperature"] = min(temperature, 1)  # OpenAI allows up to 2, Anthropic 1
    elif temperature is not None:
        out["temperature"] = temperature  # Anthropic's own 400 names the problem
    if body.get("top_p") is not None:
        out["top_p"] = body["top_p"]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else stop
    user = body.get("user")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if tools:
        out["tools"] = [_anthropic_tool(tool, k) for k, tool in enumerate(list_of(tools, "tools"))]
        serial = body.get("parallel_tool_calls") is False
        if choice is not None or serial:
            anthropic_choice = _anthropic_tool_choice(choice)
            if serial and anthropic_choice["type"] != "none":
                anthropic_choice["disable_parallel_tool_use"] = True
            out["tool_choice"] = anthropic_choice
    elif choice is not None and _anthropic_tool_choice(choice)["type"] not in ("auto", "none"):
        raise invalid("tool_choice", "`tool_choice` asks for a tool call but there are no `tools`")
    if budget is not None and not _tool_loop_without_thinking(turns):
        out["thinking"] = {"type": "enabled", "budget_tokens": budget}
    if body.get("stream"):
        out["stream"] = True
    return out


_NOT_MESSAGES = CHAT_ONLY | {"response_format", "verbosity"}
"""What a Messages request cannot say, or says only at its default: most bodies have none."""


def _refuse_not_messages(body: dict[str, Any]) -> None:
    refuse_chat_only(body, "messages")
    response_format = body.get("response_format")
    if response_format is not None and not (
        isinstance(response_format, dict) and response_format.get("type") == "text"
    ):
        raise invalid(
            "response_format",
            "`response_format` cannot be translated to the upstream's messages API "
            "(it has no output formats; ask for JSON in the prompt or use a tool)",
        )
    if body.get("verbosity") not in (None, "medium"):
        raise invalid("verbosity", "the upstream's messages API has no verbosity")


def _system_texts(content: Any, where: str, into: list[str]) -> None:
    # Each text part is a paragraph of `system`, as each system message is.
    if content is None or isinstance(content, str):
        if content:
            into.append(content)
        return
    for j, part in enumerate(list_of(content, where)):
        text = part_text(part, f"{where}[{j}]", ("text",))
        if text:
            into.append(text)


def _anthropic_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if content is None or isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(list_of(content, where)):
        at = f"{where}[{j}]"
        if isinstance(part, dict) and part.get("type") == "image_url":
            image = part.get("image_url")
            url = string(
                image.get("url") if isinstance(image, dict) else image, f"{at}.image_url.url"
            )
            blocks.append({"type": "image", "source": image_source(url, f"{at}.image_url.url")})
            continue
        text = part_text(part, at, ("text",))
        if text:  # Anthropic refuses empty text blocks
            blocks.append({"type": "text", "text": text})
    return blocks


def _tool_result(message: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str):
        raise invalid(f"{where}.tool_call_id", f"`{where}.tool_call_id` must be a string")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
    content = message.get("content")
    if isinstance(content, str):
        if content:
            block["content"] = content
        return block
    if isinstance(content, list) and any(
        isinstance(part, dict) and part.get("type") == "image_url" for part in content
    ):
        block["content"] = _anthropic_blocks(content, f"{where}.content")  # Anthropic takes them
    else:
        text = chat_text(content, f"{where}.content")
        if text:
            block["content"] = text
    return block


def _anthropic_assistant(
    message: dict[str, Any], where: str, reasoning: bool
) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for item in (reasoning and message.get(PIVOT_REASONING)) or ():
        if item.get("redacted"):
            blocks.append({"type": "redacted_thinking", "data": item.get("signature") or ""})
        else:
            blocks.append(
                {
                    "type": "thinking",
                    "thinking": item.get("text") or "",
                    "signature": item.get("signature") or "",
                }
            )
    content = message.get("content")
    if content is None or isinstance(content, str):
        text = content
    else:
        text = chat_text(content, f"{where}.content")
    if text:
        blocks.append({"type": "text", "text": text})
    if not message.get("tool_calls"):
        return blocks
    for call_id, name, arguments, at in chat_tool_calls(message, where):
        blocks.append(
            {
                "type": "tool_use",
                "id": call_id,
                "name": name,
                "input": tool_arguments(arguments, at, ".function.arguments"),
            }
        )
    return blocks


def _tool_loop_without_thinking(turns: list[dict[str, Any]]) -> bool:
    """The last assistant turn called tools and holds no thinking: the request continues a
    tool-use loop whose thinking the client did not hand back (a Chat client cannot).
    Anthropic refuses thinking on such a request (the loop is one assistant turn, which
    must start with its thinking), so it goes without; the loop's first request thought."""
    for turn in reversed(turns):
        if turn["role"] == "assistant":
            kinds = {block["type"] for block in turn["content"]}
            return "tool_use" in kinds and not kinds & {"thinking", "redacted_thinking"}
    return False


def _anthropic_tool(tool: Any, k: int) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, dict) else None
    if isinstance(function, dict) and tool.get("type", "function") == "function":
        name = function.get("name")
        description = function.get("description")
        if isinstance(name, str) and (description is None or isinstance(description, str)):
            out: dict[str, Any] = {"name": name}
            if description is not None:
                out["description"] = description
            parameters = function.get("parameters")
            out["input_schema"] = (
                parameters if isinstance(parameters, dict) else {"type": "object", "properties": {}}
            )
            return out
    # Something is wrong: only now the path of the field at fault (this runs per tool).
    where = f"tools[{k}]"
    function = chat_function(tool, where)
    string(function.get("name"), f"{where}.function.name")
    raise invalid(
        f"{where}.function.description", f"`{where}.function.description` must be a string"
    )


def _anthropic_tool_choice(choice: Any) -> dict[str, Any]:
    if choice is None or choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if (
        isinstance(choice, dict)
        and choice.get("type") == "function"
        and isinstance(choice.get("function"), dict)
    ):
        return {
            "type": "tool",
            "name": string(choice["function"].get("name"), "tool_choice.function.name"),
        }
    raise invalid(
        "tool_choice",
        '`tool_choice` must be "auto", "required", "none" or '
        '{"type": "function", "function": {"name": ...}}',
    )
