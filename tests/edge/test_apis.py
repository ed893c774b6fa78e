"""The Responses and Messages ingress bodies: what the gateway itself relies on is checked,
each bad input a 400 naming the parameter; the rest passes on in the client's own shape."""

from __future__ import annotations

import orjson
import pytest

from gateway.edge.apis import parse_messages, parse_responses
from gateway.errors import InvalidRequest

USER = [{"role": "user", "content": "hello there"}]


def test_a_responses_body_is_kept_in_its_own_shape() -> None:
    body = {"model": "m", "input": "hi", "stream": True, "max_output_tokens": 50, "store": False}
    req = parse_responses("chat.completions", orjson.dumps(body))
    assert (req.api, req.model, req.stream, req.max_tokens) == ("responses", "m", True, 50)
    assert req.body == body
    assert req.prompt_estimate >= 1


def test_a_messages_body_is_kept_in_its_own_shape() -> None:
    body = {"model": "m", "messages": USER, "max_tokens": 9, "system": "be brief"}
    req = parse_messages("chat.completions", orjson.dumps(body))
    assert (req.api, req.stream, req.max_tokens) == ("messages", False, 9)
    assert req.body == body


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x"}, "model"),
        ({"model": "m"}, "input"),
        ({"model": "m", "input": ""}, "input"),
        ({"model": "m", "input": 3}, "input"),
        ({"model": "m", "input": "x", "stream": "yes"}, "stream"),
        ({"model": "m", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"model": "m", "input": "x", "instructions": ["a"]}, "instructions"),
        ({"model": "m", "input": "x", "temperature": "hot"}, "temperature"),
    ],
)
def test_bad_responses_bodies_name_the_parameter(body: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_responses("chat.completions", orjson.dumps(body))
    assert info.value.status == 400 and info.value.param == param


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": USER, "max_tokens": 5}, "model"),
        ({"model": "m", "max_tokens": 5}, "messages"),
        ({"model": "m", "messages": [], "max_tokens": 5}, "messages"),
        ({"model": "m", "messages": ["hi"], "max_tokens": 5}, "messages"),
        ({"model": "m", "messages": USER}, "max_tokens"),
        ({"model": "m", "messages": USER, "max_tokens": -1}, "max_tokens"),
        ({"model": "m", "messages": USER, "max_tokens": True}, "max_tokens"),
    ],
)
def test_bad_messages_bodies_name_the_parameter(body: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_messages("chat.completions", orjson.dumps(body))
    assert info.value.status == 400 and info.value.param == param


def test_count_tokens_bodies_need_no_max_tokens() -> None:
    req = parse_messages(
        "chat.completions", orjson.dumps({"model": "m", "messages": USER}), counting=True
    )
    assert req.max_tokens is None


@pytest.mark.parametrize("raw", [b"", b"  ", b"{nope", b"[1]", b'"text"'])
def test_bodies_that_are_not_objects(raw: bytes) -> None:
    for parse in (parse_responses, parse_messages):
        with pytest.raises(InvalidRequest) as info:
            parse("chat.completions", raw)
        assert info.value.status == 400
