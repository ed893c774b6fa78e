"""What the request converters share: the pivot's extension, the effort table, the errors
that name a field, and small readers of Chat content that every direction uses.

Deliberately not here: any one direction (see `responses_request`, `messages_request`).
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import InvalidRequest

PIVOT_REASONING = "_gateway_reasoning"
"""Key of an assistant message of the pivot: its earlier reasoning, a list of
`{"text", "signature", "redacted"}`; never sent upstream."""

DEFAULT_MAX_TOKENS = 4096
"""Anthropic requires `max_tokens`; Chat and Responses clients usually leave it out. With
thinking on, the default is this much on top of the thinking budget."""

EFFORT_BUDGETS = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 24576}
"""Reasoning effort -> Anthropic thinking budget (tokens), and back by nearest budget."""


SHARED_PARAMS = (
    "temperature",
    "top_p",
    "parallel_tool_calls",
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "service_tier",
)
"""Chat and Responses parameters of the same name and meaning: copied as they are."""


def invalid(param: str, message: str) -> InvalidRequest:
    return InvalidRequest(message, status=400, param=param)


def refuse(body: dict[str, Any], upstream: str, *params: str) -> None:
    for param in params:
        if body.get(param) is not None:
            raise invalid(param, f"`{param}` cannot be translated to the upstream's {upstream} API")


def effort(budget: int) -> str:
    return min(EFFORT_BUDGETS, key=lambda effort: abs(EFFORT_BUDGETS[effort] - budget))


def positive(body: dict[str, Any], param: str) -> int | None:
    value = body.get(param)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise invalid(param, f"`{param}` must be a positive integer")
    return value


def list_of(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise invalid(where, f"`{where}` must be a list")
    return value


def string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise invalid(where, f"`{where}` must be a string")
    return value


def part_text(part: Any, where: str, kinds: tuple[str, ...]) -> str:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind not in kinds:
        raise invalid(f"{where}.type", f"content part type {kind!r} cannot be translated here")
    key = "refusal" if kind == "refusal" else "text"
    return string(part.get(key), f"{where}.{key}")


def chat_text(content: Any, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(
        part_text(part, f"{where}[{j}]", ("text", "refusal"))
        for j, part in enumerate(list_of(content, where))
    )


CHAT_ONLY = frozenset(
    {
        "n",
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "audio",
        "prediction",
        "web_search_options",
        "functions",
        "modalities",
    }
)
"""The parameters `refuse_chat_only` reads: a body with none of them (most) is let through
by one set operation instead of a lookup each."""


def refuse_chat_only(body: dict[str, Any], upstream: str) -> None:
    """Chat parameters neither other API has; their default values (`n: 1`, a penalty of 0,
    `logprobs: false`, `modalities: ["text"]`...) change nothing and pass."""
    if CHAT_ONLY.isdisjoint(body):
        return
    n = body.get("n")
    if n is not None and n != 1:
        raise invalid("n", f"the upstream's {upstream} API returns one answer: `n` must be 1")
    for param in ("frequency_penalty", "presence_penalty"):
        if body.get(param) not in (None, 0, 0.0):
            raise invalid(param, f"`{param}` cannot be translated to the upstream's {upstream} API")
    if body.get("logit_bias"):
        raise invalid(
            "logit_bias", f"`logit_bias` cannot be translated to the upstream's {upstream} API"
        )
    if body.get("logprobs"):
        raise invalid(
            "logprobs", f"`logprobs` cannot be translated to the upstream's {upstream} API"
        )
    if body.get("top_logprobs") not in (None, 0):
        raise invalid(
            "top_logprobs", f"`top_logprobs` cannot be translated to the upstream's {upstream} API"
        )
    refuse(body, upstream, "audio", "prediction", "web_search_options", "functions")
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise invalid("modalities", f"the upstream's {upstream} API answers in text only")


def chat_function(tool: Any, where: str) -> dict[str, Any]:
    """A Chat `tools` entry's `function` object; anything but a function tool is refused."""
    function = tool.get("function") if isinstance(tool, dict) else None
    if (
        not isinstance(tool, dict)
        or tool.get("type", "function") != "function"
        or not isinstance(function, dict)
    ):
        raise invalid(where, "only function tools can be translated")
    return function


def chat_tool_calls(message: dict[str, Any], where: str) -> list[tuple[str, str, Any, str]]:
    """An assistant message's `tool_calls`, each checked: (call id, function name, raw
    arguments, the call's path for the next message)."""
    given = message.get("tool_calls")
    if not given:
        return []
    calls = []
    for j, call in enumerate(list_of(given, f"{where}.tool_calls")):
        at = f"{where}.tool_calls[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise invalid(at, f"`{at}` must be a function call")
        call_id, name = call.get("id"), function.get("name")
        if not isinstance(call_id, str):  # paths made only for the error: this is per call
            raise invalid(f"{at}.id", f"`{at}.id` must be a string")
        if not isinstance(name, str):
            raise invalid(f"{at}.function.name", f"`{at}.function.name` must be a string")
        calls.append((call_id, name, function.get("arguments"), at))
    return calls


def json_text(value: Any, where: str) -> str:
    """`value` (a client's tool input) as the JSON string Chat and Responses carry."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        raise invalid(
            where, f"`{where}` holds integers past 64 bits or nests past 254 levels"
        ) from None


def image_source(url: str, where: str) -> dict[str, Any]:
    if url.startswith("data:"):
        head, _, data = url[5:].partition(",")
        media, _, encoding = head.partition(";")
        if encoding != "base64" or not media:
            raise invalid(where, "an image data URL must be base64 (data:TYPE;base64,...)")
        return {"type": "base64", "media_type": media, "data": data}
    if url.startswith(("http://", "https://")):
        return {"type": "url", "url": url}
    raise invalid(where, "an image URL must be an http(s) or a base64 data: URL")


def tool_arguments(arguments: Any, where: str, field: str = "") -> dict[str, Any]:
    """A tool call's JSON `arguments` as the object they hold; `where` + `field` names them
    in an error (joined only then)."""
    if not isinstance(arguments, str):
        if arguments is None:
            return {}
        raise invalid(where + field, f"`{where}{field}` must be a string")
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        if not arguments.strip():
            return {}  # a function without parameters; OpenAI sends "" or "{}"
        raise invalid(where + field, f"`{where}{field}` is not valid JSON") from None
    if not isinstance(value, dict):
        raise invalid(where + field, f"`{where}{field}` must be a JSON object")
    return value


def thinking_budget(effort: Any, max_tokens: int | None, param: str) -> int | None:
    """The Anthropic thinking budget for a reasoning `effort`, which the client's output
    limit, when it set one, must exceed (Anthropic counts thinking in `max_tokens`); None
    for no thinking."""
    if effort is None or effort == "none":
        return None
    if not isinstance(effort, str):
        raise invalid(param, f"`{param}` must be a string")
    budget = EFFORT_BUDGETS.get(effort, EFFORT_BUDGETS["high"])
    if max_tokens is not None and max_tokens <= budget:
        raise invalid(
            param,
            f"reasoning effort {effort!r} is a thinking budget of {budget} tokens, which "
            f"the output limit ({max_tokens}) must exceed for the upstream's messages API",
        )
    return budget
