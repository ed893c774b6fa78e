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
_TOKEN_LIMITS = ("max_completion_tokens", "max_tokens")
"""Either caps the answer; the first given wins (`ClientRequest.max_tokens`)."""
_NUMBERS = ("temperature", "top_p")


def bad_request(message: str, param: str | None = None) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def optional_field(
    body: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str
) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) and kind is not bool:
        raise bad_request(f"'{name}' must be {what}", name)
    if not isinstance(value, kind):
        raise bad_request(f"'{name}' must be {what}", name)
    return value


def json_object(raw: bytes) -> dict[str, Any]:
    """A request body that is a JSON object the providers can forward, naming a model; every
    ingress API's body starts so."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # Only a body that failed to parse is looked at for being empty: stripping every
        # body first copied it whole, for a case orjson refuses anyway.
        if not raw.strip():
            raise bad_request("the request body is empty; send a JSON object") from None
        raise bad_request(f"the request body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    check_depth(raw, body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required and must be a non-empty string", "model")
    return body


def parse_request(route: Route, raw: bytes) -> ClientRequest:
    body = json_object(raw)
    model: str = body["model"]
    # A value of the exact type asked for passes without `optional_field`'s call (it would
    # pass it too); anything else (null, a wrong type) goes through it.
    stream = body.get("stream", False)
    if stream is not True and stream is not False:
        stream = optional_field(body, "stream", bool, "true or false") or False
    include_usage = False
    if "stream_options" in body:
        include_usage = _include_usage(body, stream)
    max_tokens = None
    # The optional fields below are checked only when the body has them (most bodies have
    # one or two): a call less each for the others. In the same order as always, so a
    # body with several bad fields is still answered about the same one.
    for name in _TOKEN_LIMITS:
        if name in body:
            value = body[name]
            if type(value) is not int:  # bool is not int here: it takes the check's way
                value = optional_field(body, name, int, "a positive integer")
            if value is not None:
                if value <= 0:
                    raise bad_request(f"'{name}' must be a positive integer", name)
                max_tokens = max_tokens or value
    for name in _NUMBERS:
        if name in body:
            optional_field(body, name, (int, float), "a number")
    if "n" in body:
        n = optional_field(body, "n", int, "a positive integer")
        if n is not None and n < 1:
            raise bad_request("'n' must be a positive integer", "n")

    if route == "chat.completions":
        estimate = _check_messages(body)
        if "tools" in body:
            tools = optional_field(body, "tools", list, "a list")
            if tools is not None and not all(isinstance(t, dict) for t in tools):
                raise bad_request("'tools' must be a list of objects", "tools")
    elif route == "completions":
        prompt = body.get("prompt")
        if not isinstance(prompt, (str, list)):
            raise bad_request("'prompt' is required: a string or a list", "prompt")
        estimate = estimate_tokens(prompt if isinstance(prompt, str) else str(prompt))
    else:
        if stream:
            raise bad_request("embeddings cannot be streamed", "stream")
        value = body.get("input")
        if not isinstance(value, (str, list)) or not value:
            raise bad_request("'input' is required: a non-empty string or list", "input")
        estimate = estimate_tokens(value if isinstance(value, str) else str(value))
    # Positional, in the fields' order: a keyword call costs more.
    return ClientRequest(route, body, model, stream, include_usage, max_tokens, estimate)


def _include_usage(body: dict[str, Any], stream: bool) -> bool:
    """`stream_options.include_usage`, checked (False when `stream_options` is null)."""
    options = body["stream_options"]
    if type(options) is not dict:  # as in `parse_request`: the exact type passes at once
        options = optional_field(body, "stream_options", dict, "an object")
        if options is None:
            return False
    if not stream:
        raise bad_request(
            "'stream_options' is only allowed when 'stream' is true", "stream_options"
        )
    include_usage = options.get("include_usage", False)
    if include_usage is True or include_usage is False:
        return include_usage
    return optional_field(options, "include_usage", bool, "true or false") or False


def check_depth(raw: bytes, body: dict[str, Any]) -> None:
    """Refuse nesting the gateway could not forward.

    orjson reads up to 1024 levels but writes at most 254, and every provider re-serialises
    the body; Python's own recursion (a prompt's estimate) gives out near 1000. Only a body
    with that many brackets at all can nest that deep, so the common case costs two counts,
    and a body shorter than that (most: a short chat is about 200 bytes) none.
    """
    if len(raw) < _MAX_DEPTH or raw.count(b"[") + raw.count(b"{") < _MAX_DEPTH:
        return
    try:
        orjson.dumps(body)
    except orjson.JSONEncodeError:
        raise bad_request(f"the request body nests more than {_MAX_DEPTH} levels deep") from None


def _check_messages(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' is required and must be a non-empty list", "messages")
    chars = 0
    # A message's name for an error (`messages[3]`) is only spelt out when it is needed.
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            param = f"messages[{i}]"
            raise bad_request(f"'{param}' must be an object", param)
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            param = f"messages[{i}]"
            raise bad_request(
                f"'{param}.role' must be one of {', '.join(sorted(_ROLES))}", f"{param}.role"
            )
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += _parts_chars(i, content)
        elif content is not None:
            param = f"messages[{i}]"
            raise bad_request(f"'{param}.content' must be a string or a list of parts", param)
        elif role in ("user", "system", "developer"):
            param = f"messages[{i}]"
            raise bad_request(f"'{param}.content' is required for role {role}", f"{param}.content")
        chars += 16  # role and framing tokens per message
    return max(1, chars // 4)


def _parts_chars(i: int, content: list[Any]) -> int:
    """The characters of message `i`'s text parts, each part checked."""
    chars = 0
    for j, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            param = f"messages[{i}].content[{j}]"
            raise bad_request(f"'{param}' must be an object with a 'type'", param)
        text = part.get("text")
        chars += len(text) if isinstance(text, str) else 0
    return chars
