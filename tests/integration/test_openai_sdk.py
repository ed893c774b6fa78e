"""The official OpenAI SDK against the real `gateway serve`, in front of a fake provider."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from tests.support.fake_upstream import FakeUpstream, text_tokens, tool_arguments
from tests.support.gateway_proc import KEY_A, KEY_B, GatewayProcess

MESSAGES = [{"role": "user", "content": "Say something."}]


def client(gateway: GatewayProcess, key: str = KEY_A) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)


def stream_text(gateway: GatewayProcess, model: str, **kwargs: object) -> tuple[str, list]:
    chunks = list(
        client(gateway).chat.completions.create(
            model=model,
            messages=MESSAGES,
            stream=True,
            **kwargs,  # type: ignore[arg-type]
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


@pytest.mark.parametrize("model", ["gpt-test", "claude-test", "mock-gpt"])
def test_streamed_text_arrives_complete_and_in_order(gateway: GatewayProcess, model: str) -> None:
    text, chunks = stream_text(gateway, model)
    if model == "mock-gpt":
        assert len(text.split()) == 60
    else:
        assert text == "".join(text_tokens(12))
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize("model", ["gpt-test", "claude-test"])
def test_usage_chunk_only_when_asked(gateway: GatewayProcess, model: str) -> None:
    _, chunks = stream_text(gateway, model, stream_options={"include_usage": True})
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (11, 12)
    assert sum(1 for c in chunks if c.usage is not None) == 1


@pytest.mark.parametrize("model", ["gpt-tools", "claude-tools"])
def test_tool_call_deltas_reassemble_into_valid_json(gateway: GatewayProcess, model: str) -> None:
    _, chunks = stream_text(
        gateway,
        model,
        tools=[
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "parameters": {"type": "object", "properties": {}},
                },
            }
        ],
    )
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            slot = calls.setdefault(call.index, {"name": "", "arguments": "", "id": ""})
            slot["id"] += call.id or ""
            if call.function:
                slot["name"] += call.function.name or ""
                slot["arguments"] += call.function.arguments or ""
    assert list(calls) == [0]
    assert calls[0]["name"] == "get_weather"
    assert calls[0]["id"]
    assert json.loads(calls[0]["arguments"]) == tool_arguments()
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_async_client_streams(gateway: GatewayProcess) -> None:
    async def run() -> str:
        async with openai.AsyncOpenAI(
            base_url=gateway.url + "/v1", api_key=KEY_A, max_retries=0
        ) as aclient:
            stream = await aclient.chat.completions.create(
                model="claude-test",
                messages=MESSAGES,
                stream=True,  # type: ignore[arg-type]
            )
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    assert asyncio.run(run()) == "".join(text_tokens(12))


def test_non_streaming_answer_equals_the_upstreams(
    gateway: GatewayProcess, upstream: FakeUpstream
) -> None:
    via_gateway = httpx.post(
        gateway.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {KEY_A}"},
        json={"model": "gpt-test", "messages": MESSAGES},
    )
    direct = httpx.post(
        upstream.url + "/v1/chat/completions",
        json={"model": "text?n=12", "messages": MESSAGES},
    )
    assert via_gateway.status_code == 200
    assert via_gateway.content == direct.content
    completion = client(gateway).chat.completions.create(model="claude-test", messages=MESSAGES)  # type: ignore[arg-type]
    assert completion.choices[0].message.content == "".join(text_tokens(12))
    assert completion.usage is not None and completion.usage.completion_tokens == 12


@pytest.mark.parametrize(
    ("key", "model", "exception", "status"),
    [
        ("sk-wrong", "gpt-test", openai.AuthenticationError, 401),
        (KEY_B, "claude-test", openai.PermissionDeniedError, 403),
        (KEY_A, "no-such-model", openai.NotFoundError, 404),
        (KEY_A, "gpt-500", openai.InternalServerError, 502),
        (KEY_A, "gpt-401", openai.InternalServerError, 502),
        (KEY_A, "gpt-400", openai.BadRequestError, 400),
    ],
)
def test_errors_raise_the_sdks_exception_classes(
    gateway: GatewayProcess, key: str, model: str, exception: type, status: int
) -> None:
    with pytest.raises(exception) as info:
        client(gateway, key).chat.completions.create(
            model=model,
            messages=MESSAGES,
            stream=True,  # type: ignore[arg-type]
        )
    assert info.value.status_code == status  # type: ignore[attr-defined]
    assert "secret" not in str(info.value)


@pytest.mark.parametrize("model", ["gpt-midstream", "gpt-truncate", "claude-error", "gpt-garbage"])
def test_mid_stream_failure_makes_the_sdk_raise(gateway: GatewayProcess, model: str) -> None:
    received: list[str] = []
    with pytest.raises(openai.APIError):
        for chunk in client(gateway).chat.completions.create(
            model=model,
            messages=MESSAGES,
            stream=True,  # type: ignore[arg-type]
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert received, "the tokens before the failure reach the client"


def test_fallback_before_first_byte(gateway: GatewayProcess) -> None:
    text, _ = stream_text(gateway, "gpt-fallback")
    assert text == "".join(text_tokens(12))


def test_bad_input_gets_openai_shaped_400s(gateway: GatewayProcess) -> None:
    auth = {"authorization": f"Bearer {KEY_A}", "content-type": "application/json"}
    cases = [
        b"{not json",
        b"[]",
        b'{"model": "gpt-test"}',
        b'{"model": "gpt-test", "messages": "hi"}',
        b'{"model": 3, "messages": []}',
        b'{"model": "gpt-test", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
        b'{"model": "gpt-test", "messages": [{"role": "wizard", "content": "x"}]}',
        b'{"model": "gpt-test", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}',
    ]
    for body in cases:
        r = httpx.post(gateway.url + "/v1/chat/completions", headers=auth, content=body)
        assert r.status_code == 400, body
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["message"]
    big = b'{"model": "gpt-test", "messages": [{"role": "user", "content": "' + b"x" * (9 << 20)
    r = httpx.post(gateway.url + "/v1/chat/completions", headers=auth, content=big + b'"}]}')
    assert r.status_code == 413
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_chat_to_anthropic_thinks_when_asked_and_refuses_what_it_cannot_say(
    gateway: GatewayProcess, upstream: FakeUpstream
) -> None:
    """`reasoning_effort` reaches Anthropic as a thinking budget (inside `max_tokens`), a
    tool loop the client continues goes without it (the client cannot hand thinking back),
    and a parameter Anthropic has no equivalent for is a 400 naming it, nothing sent."""
    text, _ = stream_text(gateway, "claude-test", reasoning_effort="low")
    assert text == "".join(text_tokens(12))
    seen = upstream.seen[-1]
    assert seen.path == "/v1/messages"
    assert seen.body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert seen.body["max_tokens"] == 4096 + 2048
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    loop = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "done"},
    ]
    client(gateway).chat.completions.create(
        model="claude-test",
        messages=loop,  # type: ignore[arg-type]
        tools=[{"type": "function", "function": {"name": "f"}}],
        reasoning_effort="low",
    )
    seen = upstream.seen[-1]
    assert "thinking" not in seen.body
    assert seen.body["messages"][1]["content"][0]["type"] == "tool_use"
    sent = len(upstream.seen)
    with pytest.raises(openai.BadRequestError) as info:
        client(gateway).chat.completions.create(
            model="claude-test",
            messages=MESSAGES,  # type: ignore[arg-type]
            response_format={"type": "json_object"},
        )
    assert info.value.status_code == 400
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "response_format"
    assert len(upstream.seen) == sent


def test_models_lists_only_what_the_key_may_use(gateway: GatewayProcess) -> None:
    ids = [m.id for m in client(gateway, KEY_B).models.list()]
    assert ids == ["gpt-test"]
    assert "claude-test" in [m.id for m in client(gateway).models.list()]


def test_completions_and_embeddings_are_relayed(gateway: GatewayProcess) -> None:
    c = client(gateway)
    text = "".join(
        ch.choices[0].text
        for ch in c.completions.create(model="gpt-test", prompt="hi", stream=True)
        if ch.choices
    )
    assert text == "".join(text_tokens(12))
    emb = c.embeddings.create(model="gpt-test", input=["a", "b"])
    assert len(emb.data) == 2


def test_secrets_never_reach_logs_or_responses(gateway: GatewayProcess) -> None:
    stream_text(gateway, "gpt-test")
    with pytest.raises(openai.APIError):
        stream_text(gateway, "gpt-401")
    log = gateway.output()
    for secret in (KEY_A, KEY_B, "sk-upstream-secret-value", "sk-ant-upstream-secret-value"):
        assert secret not in log
