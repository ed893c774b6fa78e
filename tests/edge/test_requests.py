"""parse_request's checks: each bad field's 400 names it, in the same order as always (a
body with several bad fields is answered about the first), and what a good body gives."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.edge.requests import bad_request, optional_field, parse_request
from gateway.errors import InvalidRequest
from gateway.providers.base import Route

CHAT: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi there"}]}


def error_of(route: Route, raw: bytes) -> tuple[str, str | None]:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(route, raw)
    assert caught.value.status == 400
    return caught.value.message, caught.value.param


def chat_error(**fields: Any) -> tuple[str, str | None]:
    return error_of("chat.completions", orjson.dumps({**CHAT, **fields}))


@pytest.mark.parametrize(
    ("fields", "message", "param"),
    [
        ({"stream": 1}, "'stream' must be true or false", "stream"),
        ({"stream_options": []}, "'stream_options' must be an object", "stream_options"),
        (
            {"stream_options": {"include_usage": True}},
            "'stream_options' is only allowed when 'stream' is true",
            "stream_options",
        ),
        (
            {"stream": True, "stream_options": {"include_usage": 1}},
            "'include_usage' must be true or false",
            "include_usage",
        ),
        ({"max_completion_tokens": 0}, "'max_completion_tokens' must be a positive integer",
         "max_completion_tokens"),
        ({"max_tokens": True}, "'max_tokens' must be a positive integer", "max_tokens"),
        ({"max_tokens": 1.5}, "'max_tokens' must be a positive integer", "max_tokens"),
        ({"temperature": "hot"}, "'temperature' must be a number", "temperature"),
        ({"top_p": False}, "'top_p' must be a number", "top_p"),
        ({"n": 0}, "'n' must be a positive integer", "n"),
        ({"n": "2"}, "'n' must be a positive integer", "n"),
        ({"tools": {}}, "'tools' must be a list", "tools"),
        ({"tools": [1]}, "'tools' must be a list of objects", "tools"),
        ({"messages": []}, "'messages' is required and must be a non-empty list", "messages"),
        ({"messages": [CHAT["messages"][0], 3]}, "'messages[1]' must be an object",
         "messages[1]"),
        (
            {"messages": [{"role": "robot", "content": "x"}]},
            "'messages[0].role' must be one of assistant, developer, function, system, tool, "
            "user",
            "messages[0].role",
        ),
        (
            {"messages": [{"role": "user", "content": [{"text": "x"}]}]},
            "'messages[0].content[0]' must be an object with a 'type'",
            "messages[0].content[0]",
        ),
        (
            {"messages": [{"role": "user", "content": 5}]},
            "'messages[0].content' must be a string or a list of parts",
            "messages[0]",
        ),
        (
            {"messages": [{"role": "system"}]},
            "'messages[0].content' is required for role system",
            "messages[0].content",
        ),
    ],
)  # fmt: skip
def test_each_bad_field_is_named(fields: dict[str, Any], message: str, param: str) -> None:
    assert chat_error(**fields) == (message, param)


def test_of_several_bad_fields_the_first_checked_is_named() -> None:
    order = [
        ("stream", "yes"),
        ("stream_options", 1),
        ("max_completion_tokens", -1),
        ("max_tokens", -1),
        ("temperature", "x"),
        ("top_p", "x"),
        ("n", -1),
        ("messages", None),
    ]
    # each field reported while every field after it in the order is bad too
    for i, (name, _) in enumerate(order):
        assert chat_error(**dict(order[i:]))[1] == name
    assert chat_error(messages=[{"role": "user", "content": 1}], tools=[1])[1] == "messages[0]"


def test_null_optional_fields_are_absent_ones() -> None:
    nulls = dict.fromkeys(
        ["stream", "stream_options", "max_completion_tokens", "max_tokens", "temperature",
         "top_p", "n", "tools"]
    )  # fmt: skip
    req = parse_request("chat.completions", orjson.dumps({**CHAT, **nulls}))
    assert (req.stream, req.include_usage, req.max_tokens) == (False, False, None)


def test_a_good_body_gives_its_fields() -> None:
    raw = orjson.dumps(
        {
            **CHAT,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": 40,
            "max_completion_tokens": 30,
        }
    )
    req = parse_request("chat.completions", raw)
    assert (req.model, req.stream, req.include_usage) == ("m", True, True)
    assert req.max_tokens == 30  # max_completion_tokens first
    assert req.prompt_estimate == (len("hi there") + 16) // 4
    assert req.body == orjson.loads(raw)


@pytest.mark.parametrize("raw", [b"", b"   ", b"\n\t\r ", b"\x0b\x0c"])
def test_an_empty_body_is_named_so(raw: bytes) -> None:
    assert error_of("chat.completions", raw) == (
        "the request body is empty; send a JSON object",
        None,
    )


def test_not_json_and_not_an_object() -> None:
    message, _ = error_of("chat.completions", b" {nope")
    assert message.startswith("the request body is not valid JSON (")
    assert error_of("chat.completions", b"[]")[0] == "the request body must be a JSON object"


def test_a_body_nested_too_deep_is_refused_however_short_the_rest() -> None:
    deep = b"[" * 300 + b"]" * 300
    raw = b'{"model":"m","x":' + deep + b',"messages":[{"role":"user","content":"x"}]}'
    assert error_of("chat.completions", raw)[0] == (
        "the request body nests more than 254 levels deep"
    )
    # 253 brackets in all (252 and the messages') still go through
    ok = b'{"model":"m","x":' + b"[" * 252 + b"]" * 252 + b',"messages":[{"role":"tool"}]}'
    assert parse_request("chat.completions", ok).model == "m"


_VALUES: list[Any] = [None, True, False, 0, 1, 7, -1, 1.5, "x", [], {}]
_ABSENT = object()


def _reference(body: dict[str, Any]) -> tuple[bool, bool, int | None]:
    """The stream, include_usage and max_tokens `parse_request` gave before the exact types
    took a way of their own: every field through `optional_field`."""
    stream = optional_field(body, "stream", bool, "true or false") or False
    include_usage = False
    if "stream_options" in body:
        options = optional_field(body, "stream_options", dict, "an object")
        if options is not None:
            if not stream:
                raise bad_request(
                    "'stream_options' is only allowed when 'stream' is true", "stream_options"
                )
            include_usage = optional_field(options, "include_usage", bool, "true or false")
    max_tokens = None
    for name in ("max_completion_tokens", "max_tokens"):
        if name in body:
            value = optional_field(body, name, int, "a positive integer")
            if value is not None:
                if value <= 0:
                    raise bad_request(f"'{name}' must be a positive integer", name)
                max_tokens = max_tokens or value
    return stream, include_usage or False, max_tokens


def _outcome(parse: Any, body: dict[str, Any]) -> Any:
    try:
        return parse(body)
    except InvalidRequest as exc:
        return (exc.message, exc.param)


def test_the_exact_types_way_gives_what_the_checks_gave_for_every_value() -> None:
    def parsed(body: dict[str, Any]) -> tuple[bool, bool, int | None]:
        req = parse_request("chat.completions", orjson.dumps(body))
        return req.stream, req.include_usage, req.max_tokens

    options: list[Any] = [_ABSENT, *_VALUES, *({"include_usage": v} for v in _VALUES)]
    compared = 0
    for stream in [_ABSENT, *_VALUES]:
        for option in options:
            for limit in [_ABSENT, *_VALUES]:
                for first in ("max_tokens", "max_completion_tokens"):
                    fields = {"stream": stream, "stream_options": option, first: limit}
                    body = {**CHAT, **{k: v for k, v in fields.items() if v is not _ABSENT}}
                    assert _outcome(parsed, body) == _outcome(_reference, body), body
                    compared += 1
    assert compared == 12 * 23 * 12 * 2
