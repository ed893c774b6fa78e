"""Request converters: what each direction writes, what it refuses (a 400 naming the field),
and the round trips that hold."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import InvalidRequest
from gateway.protocols.errors import anthropic_error_body
from gateway.protocols.messages_request import chat_from_messages, messages_from_chat
from gateway.protocols.request_parts import EFFORT_BUDGETS, PIVOT_REASONING
from gateway.protocols.requests import translate_request
from gateway.protocols.responses_request import chat_from_responses, responses_from_chat

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def refused(body: dict[str, Any], client: str, upstream: str) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        translate_request(body, client, upstream)
    assert caught.value.status == 400
    return caught.value


# --- Responses -> Chat ------------------------------------------------------------------------


def test_a_responses_request_becomes_the_chat_request_saying_the_same() -> None:
    body = {
        "model": "m",
        "instructions": "Be brief.",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "weather",
                "arguments": '{"city":"Paris"}',
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "18C."}],
            },
            {"role": "user", "content": "Thanks"},
        ],
        "tools": [{"type": "function", "name": "weather", "parameters": WEATHER, "strict": True}],
        "tool_choice": {"type": "function", "name": "weather"},
        "max_output_tokens": 300,
        "temperature": 0.2,
        "reasoning": {"effort": "low", "summary": "auto"},
        "text": {"format": {"type": "json_schema", "name": "w", "schema": WEATHER, "strict": True}},
        "stream": True,
        "store": False,
    }
    assert translate_request(body, "responses", "chat") == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "assistant", "content": "18C."},
            {"role": "user", "content": "Thanks"},
        ],
        "max_completion_tokens": 300,
        "temperature": 0.2,
        "tools": [
            {
                "type": "function",
                "function": {"name": "weather", "parameters": WEATHER, "strict": True},
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
        "reasoning_effort": "low",
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "w", "schema": WEATHER, "strict": True},
        },
        "stream": True,
        "stream_options": {"include_usage": True},
    }


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"store": True}, "store"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"background": True}, "background"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0].type"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0].type",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input[0].content[0].image_url",
        ),
    ],
)
@pytest.mark.parametrize("upstream", ["chat", "messages"])
def test_what_a_responses_request_cannot_say_elsewhere_is_refused_naming_it(
    body: dict[str, Any], param: str, upstream: str
) -> None:
    error = refused({"model": "m", "input": "hi", **body}, "responses", upstream)
    assert error.param == param
    assert param.split("[")[0].split(".")[0] in error.message or error.param == param


def test_previous_response_id_passes_untouched_to_a_responses_upstream() -> None:
    body = {"model": "m", "input": "hi", "previous_response_id": "resp_1", "store": True}
    assert translate_request(body, "responses", "responses") is body


# --- Chat -> Responses ------------------------------------------------------------------------


def test_a_chat_request_becomes_a_stateless_responses_request() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Look"},
                    {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "done"},
        ],
        "max_tokens": 50,
        "tools": [
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
        ],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "reasoning_effort": "high",
        "response_format": {"type": "json_object"},
        "stream": True,
        "stream_options": {"include_usage": True},
        "seed": 7,
    }
    assert translate_request(body, "chat", "responses") == {
        "model": "m",
        "input": [
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Look"},
                    {"type": "input_image", "image_url": "https://x/y.png", "detail": "auto"},
                ],
            },
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "done"},
        ],
        "max_output_tokens": 50,
        "parallel_tool_calls": False,
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
        "tool_choice": "required",
        "reasoning": {"effort": "high"},
        "text": {"format": {"type": "json_object"}},
        "store": False,
        "stream": True,
    }


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"stop": ["END"]}, "stop"),
        ({"n": 2}, "n"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"logit_bias": {"1": 5}}, "logit_bias"),
        ({"logprobs": True}, "logprobs"),
        ({"audio": {"voice": "x"}}, "audio"),
    ],
)
def test_what_a_chat_request_cannot_say_to_responses_is_refused(
    extra: dict[str, Any], param: str
) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    assert refused(body, "chat", "responses").param == param


def test_default_valued_chat_parameters_are_not_refused() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "n": 1,
        "presence_penalty": 0,
        "logprobs": False,
    }
    assert translate_request(body, "chat", "responses")["input"] == [
        {"role": "user", "content": "hi"}
    ]


# --- Messages <-> Chat ------------------------------------------------------------------------


def test_a_messages_request_becomes_the_chat_request_saying_the_same() -> None:
    body = {
        "model": "claude",
        "max_tokens": 1000,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "AAA"},
                    },
                    {"type": "text", "text": "What is it?"},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "toolu_1", "name": "look", "input": {"x": 1}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [{"type": "text", "text": "a cat"}],
                    },
                    {"type": "text", "text": "So?"},
                ],
            },
        ],
        "tools": [{"name": "look", "description": "d", "input_schema": WEATHER}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u1"},
        "thinking": {"type": "enabled", "budget_tokens": 2000},
        "stream": True,
    }
    assert translate_request(body, "messages", "chat") == {
        "model": "claude",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}},
                    {"type": "text", "text": "What is it?"},
                ],
            },
            {
                "role": "assistant",
                "content": "Let me look.",
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "look", "arguments": '{"x":1}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "a cat"},
            {"role": "user", "content": "So?"},
        ],
        "max_completion_tokens": 1000,
        "stop": ["END"],
        "user": "u1",
        "tools": [
            {
                "type": "function",
                "function": {"name": "look", "description": "d", "parameters": WEATHER},
            }
        ],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "reasoning_effort": "low",
        "stream": True,
        "stream_options": {"include_usage": True},
    }


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"top_k": 5}, "top_k"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0]"),
        (
            {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
            "messages[0].content[0].type",
        ),
        ({"mcp_servers": [{"url": "https://x"}]}, "mcp_servers"),
    ],
)
@pytest.mark.parametrize("upstream", ["chat", "responses"])
def test_what_a_messages_request_cannot_say_elsewhere_is_refused_naming_it(
    extra: dict[str, Any], param: str, upstream: str
) -> None:
    body = {
        "model": "m",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
        **extra,
    }
    error = refused(body, "messages", upstream)
    assert error.param == param
    # A Messages client reads the refusal in Anthropic's shape.
    assert (
        anthropic_error_body(error.status, error.message)["error"]["type"]
        == "invalid_request_error"
    )


def test_a_chat_request_becomes_an_alternating_messages_request() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "A"},
            {"role": "developer", "content": [{"type": "text", "text": "B"}]},
            {"role": "user", "content": "one"},
            {"role": "user", "content": "two"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "r"},
            {"role": "assistant", "content": [{"type": "text", "text": "done"}]},
            {"role": "user", "content": "next"},
        ],
        "max_completion_tokens": 30000,
        "reasoning_effort": "high",
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "tool_choice": "none",
        "user": "u",
    }
    assert translate_request(body, "chat", "messages") == {
        "model": "m",
        "max_tokens": 30000,
        "system": "A\n\nB",
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
            },
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "c1", "name": "f", "input": {}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "c1", "content": "r"}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "done"}]},
            {"role": "user", "content": [{"type": "text", "text": "next"}]},
        ],
        "metadata": {"user_id": "u"},
        "tools": [{"name": "f", "input_schema": {"type": "object", "properties": {}}}],
        "tool_choice": {"type": "none"},
        "thinking": {"type": "enabled", "budget_tokens": EFFORT_BUDGETS["high"]},
    }


def test_a_thinking_budget_the_output_limit_cannot_hold_is_refused() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 500,
        "reasoning_effort": "medium",
    }
    assert refused(body, "chat", "messages").param == "reasoning_effort"


def test_tool_arguments_that_are_not_a_json_object_are_refused_for_messages() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}
    body = {
        "model": "m",
        "messages": [{"role": "assistant", "content": None, "tool_calls": [call]}],
    }
    assert refused(body, "chat", "messages").param == "messages[0].tool_calls[0].function.arguments"


def test_a_tool_input_json_cannot_carry_is_refused_naming_it() -> None:
    # The edge parses bodies with orjson (which reads such integers as floats); a body built
    # another way still gets a 400, not a crash.
    block = {"type": "tool_use", "id": "t", "name": "f", "input": {"n": 2**64}}
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "assistant", "content": [block]}]}
    assert refused(body, "messages", "chat").param == "messages[0].content[0].input"


# --- Responses <-> Messages -------------------------------------------------------------------


def test_reasoning_round_trips_between_a_responses_client_and_a_messages_upstream() -> None:
    # The reasoning item the Responses encoder wrote from Anthropic's thinking (signature as
    # encrypted_content) goes back to Anthropic as the thinking block it was.
    body = {
        "model": "m",
        "input": [
            {"role": "user", "content": "Weather?"},
            {
                "type": "reasoning",
                "id": "rs_1",
                "summary": [{"type": "summary_text", "text": "Use the tool."}],
                "encrypted_content": "sig==",
            },
            {
                "type": "function_call",
                "call_id": "toolu_1",
                "name": "weather",
                "arguments": '{"city":"Paris"}',
            },
            {"type": "function_call_output", "call_id": "toolu_1", "output": "18C"},
        ],
        "max_output_tokens": 100,
    }
    assert translate_request(body, "responses", "messages")["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Use the tool.", "signature": "sig=="},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "weather",
                    "input": {"city": "Paris"},
                },
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"}],
        },
    ]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"text": {"format": {"type": "json_object"}}}, "text.format"),
        ({"text": {"verbosity": "low"}}, "text.verbosity"),
        ({"reasoning": {"effort": "high"}, "max_output_tokens": 1000}, "reasoning.effort"),
        (
            {"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "[1]"}]},
            "input[0].arguments",
        ),
        (
            {
                "input": [
                    {"role": "user", "content": [{"type": "input_image", "image_url": "ftp://x"}]}
                ]
            },
            "input[0].content[0].image_url",
        ),
    ],
)
def test_a_responses_request_refused_by_messages_names_the_responses_field(
    extra: dict[str, Any], param: str
) -> None:
    # The Chat -> Messages step would name Chat's fields; the client named its own.
    assert refused({"model": "m", "input": "hi", **extra}, "responses", "messages").param == param


def test_a_responses_reasoning_effort_without_a_limit_gets_room_to_think() -> None:
    """No `max_output_tokens`: the default answer length on top of the thinking budget (it
    used to be a 400, the default 4096 not exceeding the budget); the default verbosity
    passes."""
    body = {
        "model": "m",
        "input": "hi",
        "reasoning": {"effort": "medium"},
        "text": {"verbosity": "medium"},
    }
    out = translate_request(body, "responses", "messages")
    assert out["thinking"] == {"type": "enabled", "budget_tokens": EFFORT_BUDGETS["medium"]}
    assert out["max_tokens"] == 4096 + EFFORT_BUDGETS["medium"]


@pytest.mark.parametrize("upstream", ["messages", "responses"])
def test_tool_calls_that_are_not_a_list_are_refused_not_a_crash(upstream: str) -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "tool_calls": 5},
        ],
    }
    assert refused(body, "chat", upstream).param == "messages[1].tool_calls"


def test_stop_sequences_to_a_responses_upstream_are_refused_by_their_messages_name() -> None:
    body = {
        "model": "m",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
        "stop_sequences": ["X"],
    }
    assert refused(body, "messages", "responses").param == "stop_sequences"


def test_earlier_reasoning_never_reaches_a_chat_or_responses_upstream() -> None:
    body = {
        "model": "m",
        "max_tokens": 100,
        "messages": [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "t", "signature": "s"},
                    {"type": "text", "text": "hello"},
                ],
            },
            {"role": "user", "content": "again"},
        ],
    }
    chat = translate_request(body, "messages", "chat")
    assert all(PIVOT_REASONING not in message for message in chat["messages"])
    responses = translate_request(body, "messages", "responses")
    assert PIVOT_REASONING not in repr(responses)
    assert responses["input"][1] == {"role": "assistant", "content": "hello"}


# --- round trips --------------------------------------------------------------------------------

_text = st.text(min_size=1, max_size=8)
_name = st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True)
_args = st.dictionaries(_name, st.integers(-(2**63), 2**63 - 1) | _text, max_size=3)


@st.composite
def messages_requests(draw: st.DrawFn) -> dict[str, Any]:
    """Messages requests in the canonical form Chat can carry: block lists, tool results
    first in a user turn, at most one text block per assistant turn, after its thinking."""
    turns: list[dict[str, Any]] = []
    pending: list[str] = []
    for n in range(draw(st.integers(1, 5))):
        if n % 2 == 0:
            blocks: list[dict[str, Any]] = [
                {"type": "tool_result", "tool_use_id": call_id, "content": draw(_text)}
                for call_id in pending
            ]
            blocks += [
                {"type": "text", "text": t}
                for t in draw(st.lists(_text, min_size=0 if pending else 1, max_size=2))
            ]
            turns.append({"role": "user", "content": blocks})
            pending = []
        else:
            blocks = [
                {"type": "thinking", "thinking": draw(_text), "signature": draw(_name)}
                for _ in range(draw(st.integers(0, 1)))
            ]
            if draw(st.booleans()):
                blocks.append({"type": "text", "text": draw(_text)})
            calls = draw(st.integers(0 if blocks else 1, 2))
            for k in range(calls):
                call_id = f"toolu_{n}_{k}"
                blocks.append(
                    {"type": "tool_use", "id": call_id, "name": draw(_name), "input": draw(_args)}
                )
                pending.append(call_id)
            turns.append({"role": "assistant", "content": blocks})
    budget = draw(st.sampled_from(sorted(EFFORT_BUDGETS.values())))
    body: dict[str, Any] = {
        "model": "m",
        "max_tokens": budget + draw(st.integers(1, 1000)),
        "messages": turns,
    }
    if draw(st.booleans()):
        body["system"] = draw(_text)
    if draw(st.booleans()):
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
        # As Anthropic requires: a tool-use loop's assistant turn starts with its thinking.
        last = next((t for t in reversed(turns) if t["role"] == "assistant"), None)
        kinds = {block["type"] for block in last["content"]} if last else set()
        if last and "tool_use" in kinds and "thinking" not in kinds:
            thought = {"type": "thinking", "thinking": draw(_text), "signature": draw(_name)}
            last["content"].insert(0, thought)
    if draw(st.booleans()):
        body["tools"] = [{"name": draw(_name), "description": draw(_text), "input_schema": WEATHER}]
        body["tool_choice"] = draw(
            st.sampled_from([{"type": "auto"}, {"type": "any"}, {"type": "tool", "name": "x"}])
        )
    if draw(st.booleans()):
        body["stop_sequences"] = draw(st.lists(_text, min_size=1, max_size=2))
    if draw(st.booleans()):
        body["temperature"] = draw(st.floats(0, 1))
    if draw(st.booleans()):
        body["stream"] = True
    return body


@settings(max_examples=200, deadline=None)
@given(body=messages_requests())
def test_messages_to_chat_and_back_is_the_same_request(body: dict[str, Any]) -> None:
    assert messages_from_chat(chat_from_messages(body)) == body


@st.composite
def responses_requests(draw: st.DrawFn) -> dict[str, Any]:
    """Responses requests in the canonical form Chat can carry (images with their detail,
    assistant text as a string, no instructions: Chat has them as a system message)."""
    items: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["user", "system", "assistant", "call"]))
        if kind == "user":
            content: Any = draw(
                _text
                | st.lists(
                    st.builds(lambda t: {"type": "input_text", "text": t}, _text)
                    | st.builds(
                        lambda u: {
                            "type": "input_image",
                            "image_url": "https://x/" + u,
                            "detail": "auto",
                        },
                        _name,
                    ),
                    min_size=1,
                    max_size=3,
                )
            )
            items.append({"role": "user", "content": content})
        elif kind == "system":
            items.append(
                {"role": draw(st.sampled_from(["system", "developer"])), "content": draw(_text)}
            )
        elif kind == "assistant":
            items.append({"role": "assistant", "content": draw(_text)})
        else:
            call_id = "call_" + draw(_name)
            items.append(
                {
                    "type": "function_call",
                    "call_id": call_id,
                    "name": draw(_name),
                    "arguments": draw(_text),
                }
            )
            items.append(
                {"type": "function_call_output", "call_id": call_id, "output": draw(_text)}
            )
    body: dict[str, Any] = {"model": "m", "input": items}
    if draw(st.booleans()):
        body["max_output_tokens"] = draw(st.integers(1, 10000))
    if draw(st.booleans()):
        body["tools"] = [
            {"type": "function", "name": draw(_name), "parameters": WEATHER, "strict": True}
        ]
        body["tool_choice"] = draw(
            st.sampled_from(["auto", "none", "required", {"type": "function", "name": "f"}])
        )
    if draw(st.booleans()):
        body["reasoning"] = {"effort": draw(st.sampled_from(["low", "medium", "high"]))}
    if draw(st.booleans()):
        body["text"] = {
            "format": {"type": "json_schema", "name": "out", "schema": WEATHER, "strict": True}
        }
    if draw(st.booleans()):
        body["parallel_tool_calls"] = draw(st.booleans())
    body["store"] = False
    return body


@settings(max_examples=200, deadline=None)
@given(body=responses_requests())
def test_responses_to_chat_and_back_is_the_same_request(body: dict[str, Any]) -> None:
    assert responses_from_chat(chat_from_responses(body)) == body
