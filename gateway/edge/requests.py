"""Validating client requests: every bad input becomes a 400 naming the parameter.

Only what the gateway itself relies on is checked (model, messages, stream flags, token
limits, the shapes a provider translation reads); everything else is the provider's to
judge and passes through untouched, so new OpenAI parameters work without a gateway
release.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import InvalidRequest
from gateway.providers.base import Route
from gateway.relay.request import ClientRequest
from gateway.tokens import estimate_tokens

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_MAX_DEPTH = 254
"""orjson.dumps's recursion limit: the deepest body a provider can send on."""


def _bad(message: str, param: str | None = None) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _optional(body: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) and kind is not bool:
        raise _bad(f"'{name}' must be {what}", name)
    if not isinstance(value, kind):
        raise _bad(f"'{name}' must be {what}", name)
    return value


def parse_request(route: Route, raw: bytes) -> ClientRequest:
    if not raw.strip():
        raise _bad("the request body is empty; send a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _bad(f"the request body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object")
    _check_depth(raw, body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' is required and must be a non-empty string", "model")
    stream = _optional(body, "stream", bool, "true or false") or False
    options = _optional(body, "stream_options", dict, "an object")
    include_usage = False
    if options is not None:
        if not stream:
            raise _bad("'stream_options' is only allowed when 'stream' is true", "stream_options")
        include_usage = _optional(options, "include_usage", bool, "true or false") or False
    max_tokens = None
    for name in ("max_completion_tokens", "max_tokens"):
        value = _optional(body, name, int, "a positive integer")
        if value is not None:
            if value <= 0:
                raise _bad(f"'{name}' must be a positive integer", name)
            max_tokens = max_tokens or value
    for name in ("temperature", "top_p"):
        _optional(body, name, (int, float), "a number")
    n = _optional(body, "n", int, "a positive integer")
    if n is not None and n < 1:
        raise _bad("'n' must be a positive integer", "n")

    if route == "chat.completions":
        estimate = _check_messages(body)
        tools = _optional(body, "tools", list, "a list")
        if tools is not None and not all(isinstance(t, dict) for t in tools):
            raise _bad("'tools' must be a list of objects", "tools")
    elif route == "completions":
        prompt = body.get("prompt")
        if not isinstance(prompt, (str, list)):
            raise _bad("'prompt' is required: a string or a list", "prompt")
        estimate = estimate_tokens(prompt if isinstance(prompt, str) else str(prompt))
    else:
        if stream:
            raise _bad("embeddings cannot be streamed", "stream")
        value = body.get("input")
        if not isinstance(value, (str, list)) or not value:
            raise _bad("'input' is required: a non-empty string or list", "input")
        estimate = estimate_tokens(value if isinstance(value, str) else str(value))
    return ClientRequest(
        route=route,
        body=body,
        model=model,
        stream=stream,
        include_usage=include_usage,
        max_tokens=max_tokens,
        prompt_estimate=estimate,
    )


def _check_depth(raw: bytes, body: dict[str, Any]) -> None:
    """Refuse nesting the gateway could not forward.

    orjson reads up to 1024 levels but writes at most 254, and every provider re-serialises
    the body; Python's own recursion (a prompt's estimate) gives out near 1000. Only a body
    with that many brackets at all can nest that deep, so the common case costs two counts.
    """
    if raw.count(b"[") + raw.count(b"{") < _MAX_DEPTH:
        return
    try:
        orjson.dumps(body)
    except orjson.JSONEncodeError:
        raise _bad(f"the request body nests more than {_MAX_DEPTH} levels deep") from None


def _check_messages(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' is required and must be a non-empty list", "messages")
    chars = 0
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad(f"'{param}' must be an object", param)
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            raise _bad(
                f"'{param}.role' must be one of {', '.join(sorted(_ROLES))}", f"{param}.role"
            )
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise _bad(
                        f"'{param}.content[{j}]' must be an object with a 'type'",
                        f"{param}.content[{j}]",
                    )
                text = part.get("text")
                chars += len(text) if isinstance(text, str) else 0
        elif content is not None:
            raise _bad(f"'{param}.content' must be a string or a list of parts", param)
        elif role in ("user", "system", "developer"):
            raise _bad(f"'{param}.content' is required for role {role}", f"{param}.content")
        chars += 16  # role and framing tokens per message
    return max(1, chars // 4)
