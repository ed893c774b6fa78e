"""Hypothesis strategies for hostile client input: any JSON, and valid bodies mutated."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import strategies as st

from gateway.providers.base import Route

VALID: dict[Route, dict[str, Any]] = {
    "chat.completions": {
        "model": "gpt-test",
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 16,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
    },
    "completions": {"model": "gpt-test", "prompt": "once upon", "max_tokens": 8, "n": 1},
    "embeddings": {"model": "gpt-test", "input": ["a", "b"]},
}
KEYS = [
    "model", "messages", "stream", "stream_options", "include_usage", "max_tokens",
    "max_completion_tokens", "temperature", "top_p", "n", "tools", "prompt", "input",
    "role", "content", "type", "text", "function", "tool_calls", "tool_call_id", "id",
    "arguments", "name", "image_url", "url", "tool_choice", "stop", "parameters", "user",
]  # fmt: skip

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=8,
)


PLACES: list[tuple[str | int, ...]] = [
    (),
    ("stream_options",),
    ("messages", 0),
    ("messages", -1),
    ("messages", -1, "content", 0),
    ("messages", 1, "tool_calls", 0),
    ("messages", 1, "tool_calls", 0, "function"),
    ("tools", 0),
    ("tools", 0, "function"),
]
"""Where in a body a mutation lands (skipped when the body no longer has that place)."""

TRANSLATED_KEYS = [
    *KEYS, "reasoning_effort", "response_format", "verbosity", "parallel_tool_calls",
    "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty", "logit_bias",
    "modalities", "description", "refusal", "detail", "_gateway_reasoning",
]  # fmt: skip
"""What the Chat -> Messages translator reads besides what the edge reads (and the pivot's
own key, which a Chat client's body must not get to act on)."""

translated_mutations = st.lists(
    st.tuples(
        st.sampled_from([*PLACES, ("messages", 1), ("messages", 2)]),
        st.sampled_from(TRANSLATED_KEYS) | st.text(max_size=8),
        json_values,
        st.booleans(),
    ),
    min_size=1,
    max_size=3,
)
"""`mutations` for the translation fuzz: its keys too, and the assistant and tool messages."""

mutations = st.lists(
    st.tuples(
        st.sampled_from(PLACES),
        st.sampled_from(KEYS) | st.text(max_size=8),
        json_values,
        st.booleans(),  # True: delete the key instead
    ),
    min_size=1,
    max_size=3,
)


def mutate(
    base: dict[str, Any], changes: list[tuple[tuple[str | int, ...], str, Any, bool]]
) -> bytes:
    body = orjson.loads(orjson.dumps(base))
    for path, key, value, delete in changes:
        node: Any = body
        for step in path:
            if isinstance(step, int):
                # A place past the end of a list an earlier change shrank is skipped too.
                inside = isinstance(node, list) and -len(node) <= step < len(node)
                node = node[step] if inside else None
            else:
                node = node.get(step) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        if delete:
            node.pop(key, None)
        else:
            node[key] = value
    return orjson.dumps(body)


TOOL_CHAT: dict[str, Any] = {
    "model": "claude-test",
    "temperature": 1.5,
    "stop": ["END"],
    "tool_choice": "auto",
    "messages": [
        {"role": "system", "content": "be brief"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "and tomorrow?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            ],
        },
    ],
    "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
}
