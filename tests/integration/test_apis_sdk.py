"""The official `openai` SDK on /v1/responses and the `anthropic` SDK on /v1/messages,
against the real `gateway serve`: each against a translated upstream (an OpenAI-compatible
Chat upstream, the built-in mock) and, where the upstream speaks the client's API, a
pass-through one. Text, tool calls, usage, every error class, a failure mid-stream, and a
client that leaves cancelling the upstream."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from gateway.config import hash_key
from tests.support.fake_upstream import FakeUpstream, text_tokens, tool_arguments
from tests.support.gateway_proc import KEY_A, KEY_B, GatewayProcess, test_config

KEY_LIMITED = "sk-test-limited"
TEXT = "".join(text_tokens(12))
TOOLS_RESPONSES: Any = [
    {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
]
TOOLS_MESSAGES: Any = [{"name": "get_weather", "input_schema": {"type": "object"}}]
USER: Any = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def gw(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """The shared test config, plus upstream failures of every class and a key whose
    limit is one request a minute."""
    config = test_config(upstream.url, max_body_bytes=100_000)
    config["timeouts"]["keepalive"] = 0.4
    config["models"] += [
        {"name": f"gpt-{code}x", "provider": "fake", "upstream_model": f"status?code={code}"}
        for code in (404, 429, 503)
    ]
    config["models"] += [
        {
            "name": f"claude-{code}x",
            "provider": "fake-anthropic",
            "upstream_model": f"status?code={code}",
        }
        for code in (400, 404, 429, 500, 529)
    ]
    config["providers"].append(
        {
            "name": "fake-responses",
            "type": "openai",
            "base_url": upstream.url + "/v1",
            "api_key": "sk-upstream-secret-value",
            "apis": ["chat", "responses"],
            "max_retries": 1,
        }
    )
    config["models"] += [
        {"name": name, "provider": "fake-responses", "upstream_model": target}
        for name, target in (
            ("gptr-test", "text?n=12"),
            ("gptr-tools", "tools"),
            ("gptr-error", "midstream_error?at=5"),
            ("gptr-paced", "text?n=40&pace_ms=50"),
            ("gptr-truncate", "truncate?at=5"),
            ("gptr-400x", "status?code=400"),
            ("gptr-429x", "status?code=429"),
            ("gptr-500x", "status?code=500"),
        )
    ]
    config["models"] += [
        {"name": "gpt-thinking", "provider": "fake", "upstream_model": "thinking"},
        {"name": "gpt-pause", "provider": "fake", "upstream_model": "stall?at=3&stall_s=1.5"},
        {
            "name": "claude-truncate",
            "provider": "fake-anthropic",
            "upstream_model": "truncate?at=5",
        },
        {"name": "claude-thinking", "provider": "fake-anthropic", "upstream_model": "thinking"},
    ]
    config["models"].append(
        {
            "name": "claude-paced",
            "provider": "fake-anthropic",
            "upstream_model": "text?n=40&pace_ms=50",
        }
    )
    config["keys"].append(
        {"id": "limited", "key_sha256": hash_key(KEY_LIMITED), "limits": {"rpm": 1}}
    )
    with GatewayProcess(config, tmp_path_factory.mktemp("apis")) as proc:
        yield proc


_OPEN: list[openai.OpenAI | anthropic.Anthropic] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def oai(gw: GatewayProcess, key: str = KEY_A) -> openai.OpenAI:
    _OPEN.append(openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0))
    return _OPEN[-1]  # type: ignore[return-value]


def ant(gw: GatewayProcess, key: str = KEY_A) -> anthropic.Anthropic:
    _OPEN.append(anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0))
    return _OPEN[-1]  # type: ignore[return-value]


def last_seen(upstream: FakeUpstream, marker: str):  # type: ignore[no-untyped-def]
    return next(s for s in reversed(upstream.seen) if marker in str(s.body.get("model")))


# --- /v1/responses ------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt-test", "mock-gpt", "claude-test", "gptr-test"])
def test_responses_stream_text_in_order_with_usage(gw: GatewayProcess, model: str) -> None:
    events = list(oai(gw).responses.create(model=model, input="Say something.", stream=True))
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert "response.failed" not in types
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == text
    assert final.usage is not None
    if model == "mock-gpt":
        assert len(text.split()) == 60
        assert final.usage.output_tokens == 60
    else:
        assert text == TEXT
        assert (final.usage.input_tokens, final.usage.output_tokens) == (11, 12)


@pytest.mark.parametrize("model", ["gpt-test", "mock-gpt", "claude-test", "gptr-test"])
def test_responses_stream_helper_and_plain_answer_agree(gw: GatewayProcess, model: str) -> None:
    with oai(gw).responses.stream(model=model, input="Say something.") as stream:
        streamed = stream.get_final_response()
    plain = oai(gw).responses.create(model=model, input="Say something.")
    assert streamed.output_text == plain.output_text != ""
    assert plain.status == streamed.status == "completed"
    assert plain.usage is not None and streamed.usage is not None
    assert plain.usage.output_tokens == streamed.usage.output_tokens


@pytest.mark.parametrize("model", ["gpt-tools", "claude-tools", "gptr-tools"])
def test_responses_function_call_arguments_stream_into_valid_json(
    gw: GatewayProcess, model: str
) -> None:
    with oai(gw).responses.stream(model=model, input="Weather?", tools=TOOLS_RESPONSES) as stream:
        deltas = [e.delta for e in stream if e.type == "response.function_call_arguments.delta"]
        final = stream.get_final_response()
    calls = [item for item in final.output if item.type == "function_call"]
    assert len(calls) == 1
    assert calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == tool_arguments()
    assert len(deltas) > 1  # streamed, not gathered
    assert "".join(deltas) == calls[0].arguments


@pytest.mark.parametrize("model", ["gpt-midstream", "claude-error", "gptr-error"])
def test_responses_midstream_failure_is_response_failed_never_completed(
    gw: GatewayProcess, model: str
) -> None:
    events = list(oai(gw).responses.create(model=model, input="x", stream=True))
    types = [e.type for e in events]
    assert types[-1] == "response.failed"
    assert "response.completed" not in types
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "".join(text_tokens(5))  # everything before the failure, then the failure


def test_responses_stateful_fields_are_refused_naming_the_field(gw: GatewayProcess) -> None:
    for params in ({"previous_response_id": "resp_123"}, {"store": True}):
        with pytest.raises(openai.BadRequestError) as info:
            oai(gw).responses.create(model="gpt-test", input="x", **params)  # type: ignore[arg-type]
        body = info.value.body
        assert isinstance(body, dict) and body["param"] == next(iter(params))


@pytest.mark.parametrize(
    ("model", "key", "params", "error"),
    [
        ("gpt-test", "sk-wrong", {}, openai.AuthenticationError),
        ("gpt-tools", KEY_B, {}, openai.PermissionDeniedError),
        ("no-such-model", KEY_A, {}, openai.NotFoundError),
        ("gpt-test", KEY_A, {"max_output_tokens": -1}, openai.BadRequestError),
        ("gpt-400", KEY_A, {}, openai.BadRequestError),
        ("gpt-404x", KEY_A, {}, openai.NotFoundError),
        ("gpt-429x", KEY_A, {}, openai.RateLimitError),
        ("gpt-500", KEY_A, {}, openai.InternalServerError),
        ("gpt-503x", KEY_A, {}, openai.InternalServerError),
        ("claude-400x", KEY_A, {}, openai.BadRequestError),
        ("claude-404x", KEY_A, {}, openai.NotFoundError),
        ("claude-429x", KEY_A, {}, openai.RateLimitError),
        ("claude-500x", KEY_A, {}, openai.InternalServerError),
        ("claude-529x", KEY_A, {}, openai.InternalServerError),
        ("gptr-400x", KEY_A, {}, openai.BadRequestError),
        ("gptr-429x", KEY_A, {}, openai.RateLimitError),
        ("gptr-500x", KEY_A, {}, openai.InternalServerError),
    ],
)
@pytest.mark.parametrize("stream", [True, False])
def test_responses_errors_raise_the_sdk_class(
    gw: GatewayProcess, model: str, key: str, params: dict[str, Any], error: type, stream: bool
) -> None:
    with pytest.raises(error):
        oai(gw, key).responses.create(model=model, input="x", stream=stream, **params)


def test_responses_to_a_responses_upstream_pass_as_its_bytes(
    gw: GatewayProcess, upstream: FakeUpstream
) -> None:
    """`apis: [chat, responses]`: the request goes to /v1/responses as it came (state
    fields included: that upstream stores responses) and the events come back untouched."""
    body = {"model": "gptr-test", "input": "x", "stream": True, "previous_response_id": "r1"}
    raw = httpx.post(gw.url + "/v1/responses", headers={"x-api-key": KEY_A}, json=body)
    assert raw.status_code == 200
    seen = last_seen(upstream, "text?n=12")
    assert seen.path == "/v1/responses"
    assert seen.body["previous_response_id"] == "r1" and "stream_options" not in seen.body
    events = [line for line in raw.text.split("\n\n") if line]
    assert events[0].startswith("event: response.created")
    assert '"id":"resp_' in events[0]
    assert events[-1].startswith("event: response.completed")


# --- /v1/messages -------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt-test", "mock-gpt", "claude-test"])
def test_messages_stream_text_in_order_with_usage(gw: GatewayProcess, model: str) -> None:
    with ant(gw).messages.stream(model=model, max_tokens=100, messages=USER) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    text = "".join(pieces)
    assert len(pieces) > 1
    assert final.content[0].type == "text" and final.content[0].text == text
    assert final.stop_reason == "end_turn"
    if model == "mock-gpt":
        assert len(text.split()) == 60
        assert final.usage.output_tokens == 60
    else:
        assert text == TEXT
        assert (final.usage.input_tokens, final.usage.output_tokens) == (11, 12)
    plain = ant(gw).messages.create(model=model, max_tokens=100, messages=USER)
    assert plain.content[0].type == "text" and plain.content[0].text == text
    assert plain.usage.output_tokens == final.usage.output_tokens


@pytest.mark.parametrize("model", ["gpt-tools", "claude-tools"])
def test_messages_tool_use_streams_input_json_deltas(gw: GatewayProcess, model: str) -> None:
    with ant(gw).messages.stream(
        model=model, max_tokens=100, messages=USER, tools=TOOLS_MESSAGES
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    partial = [
        e.delta.partial_json  # type: ignore[union-attr]
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    ]
    assert len(partial) > 1
    blocks = [b for b in final.content if b.type == "tool_use"]
    assert len(blocks) == 1 and blocks[0].name == "get_weather"
    assert blocks[0].input == tool_arguments()
    assert final.stop_reason == "tool_use"


@pytest.mark.parametrize("model", ["gpt-midstream", "claude-error"])
def test_messages_midstream_failure_raises(gw: GatewayProcess, model: str) -> None:
    pieces: list[str] = []
    with (
        pytest.raises(anthropic.APIStatusError) as info,
        ant(gw).messages.stream(model=model, max_tokens=100, messages=USER) as stream,
    ):
        pieces.extend(stream.text_stream)
    assert "".join(pieces) == "".join(text_tokens(5))
    assert "failed" in str(info.value.message) or info.value.body


@pytest.mark.parametrize(
    ("model", "key", "kwargs", "error", "status"),
    [
        ("gpt-test", "sk-wrong", {}, anthropic.AuthenticationError, 401),
        ("gpt-tools", KEY_B, {}, anthropic.PermissionDeniedError, 403),
        ("no-such-model", KEY_A, {}, anthropic.NotFoundError, 404),
        ("gpt-test", KEY_A, {"max_tokens": -1}, anthropic.BadRequestError, 400),
        ("gpt-400", KEY_A, {}, anthropic.BadRequestError, 400),
        ("gpt-404x", KEY_A, {}, anthropic.NotFoundError, 404),
        ("gpt-429x", KEY_A, {}, anthropic.RateLimitError, 429),
        ("gpt-500", KEY_A, {}, anthropic.InternalServerError, 502),
        ("gpt-503x", KEY_A, {}, anthropic.InternalServerError, 503),
        ("claude-400x", KEY_A, {}, anthropic.BadRequestError, 400),
        ("claude-404x", KEY_A, {}, anthropic.NotFoundError, 404),
        ("claude-429x", KEY_A, {}, anthropic.RateLimitError, 429),
        ("claude-500x", KEY_A, {}, anthropic.InternalServerError, 502),
        ("claude-529x", KEY_A, {}, anthropic.InternalServerError, 503),
    ],
)
@pytest.mark.parametrize("stream", [True, False])
def test_messages_errors_raise_the_sdk_class_in_anthropic_shape(
    gw: GatewayProcess,
    model: str,
    key: str,
    kwargs: dict[str, Any],
    error: type[anthropic.APIStatusError],
    status: int,
    stream: bool,
) -> None:
    params: dict[str, Any] = {"max_tokens": 100, **kwargs}
    with pytest.raises(error) as info:
        ant(gw, key).messages.create(model=model, messages=USER, stream=stream, **params)
    assert info.value.status_code == status
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert isinstance(body["error"]["type"], str) and body["error"]["message"]


def test_messages_gateway_errors_are_anthropic_shaped_too(gw: GatewayProcess) -> None:
    """The gateway's own refusals on this route: a body too large to read, not JSON, a
    rate limit."""
    url = gw.url + "/v1/messages"
    auth = {"x-api-key": KEY_A, "content-type": "application/json"}
    bad = httpx.post(url, headers=auth, content=b"{not json")
    assert bad.status_code == 400
    assert bad.json()["type"] == "error"
    assert bad.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.RequestTooLargeError) as too_large:
        ant(gw).messages.create(
            model="gpt-test", max_tokens=10, messages=[{"role": "user", "content": "x" * 200_000}]
        )
    assert too_large.value.status_code == 413
    assert too_large.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]
    with pytest.raises(openai.APIStatusError) as openai_too_large:
        oai(gw).responses.create(model="gpt-test", input="x" * 200_000)
    assert openai_too_large.value.status_code == 413
    limited = ant(gw, KEY_LIMITED)
    limited.messages.create(model="gpt-test", max_tokens=10, messages=USER)
    with pytest.raises(anthropic.RateLimitError) as info:
        limited.messages.create(model="gpt-test", max_tokens=10, messages=USER)
    assert info.value.response.headers.get("retry-after")
    assert info.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


def test_messages_to_anthropic_pass_the_upstream_bytes_and_headers(
    gw: GatewayProcess, upstream: FakeUpstream
) -> None:
    """Same API both sides: the events are Anthropic's own (its `ping` and the upstream's
    message id come through untouched), and the client's version and beta headers reach
    the upstream."""
    beta = {"anthropic-beta": "interleaved-thinking-2025-05-14", "anthropic-version": "2099-01-01"}
    with ant(gw).messages.stream(
        model="claude-test", max_tokens=100, messages=USER, extra_headers=beta
    ) as stream:
        types = [e.type for e in stream]
        final = stream.get_final_message()
    assert final.id == "msg_fake"
    assert types[0] == "message_start"
    assert "ping" not in types or types.index("ping") == 1
    seen = last_seen(upstream, "text?n=12")
    assert seen.path == "/v1/messages"
    assert seen.headers["anthropic-version"] == "2099-01-01"
    assert seen.headers["anthropic-beta"] == beta["anthropic-beta"]
    assert seen.headers["x-api-key"] == "sk-ant-upstream-secret-value"
    raw = httpx.post(
        gw.url + "/v1/messages",
        headers={"x-api-key": KEY_A},
        json={"model": "claude-test", "max_tokens": 10, "messages": USER, "stream": True},
    ).text
    assert "event: ping" in raw  # translated streams drop pings; a pass-through keeps them


def test_count_tokens_asks_anthropic_and_estimates_elsewhere(
    gw: GatewayProcess, upstream: FakeUpstream
) -> None:
    counted = ant(gw).messages.count_tokens(model="claude-test", messages=USER)
    assert counted.input_tokens == 42  # Anthropic's own count
    seen = upstream.seen[-1]
    assert seen.path == "/v1/messages/count_tokens"
    assert "max_tokens" not in seen.body and seen.body["model"] == "text?n=12"
    response = httpx.post(
        gw.url + "/v1/messages/count_tokens",
        headers={"x-api-key": KEY_A},
        json={"model": "gpt-test", "messages": USER},
    )
    assert response.status_code == 200
    assert response.headers["x-gateway-token-count"] == "estimate"
    assert response.json()["input_tokens"] > 0
    with pytest.raises(anthropic.AuthenticationError):
        ant(gw, "sk-wrong").messages.count_tokens(model="claude-test", messages=USER)
    with pytest.raises(anthropic.PermissionDeniedError):
        ant(gw, KEY_B).messages.count_tokens(model="claude-test", messages=USER)

    def logged() -> set[int]:
        lines = [json.loads(line) for line in gw.output().splitlines() if '"request"' in line]
        return {r["status"] for r in lines if r.get("route") == "messages.count_tokens"}

    deadline = time.monotonic() + 5  # the request log writes in batches, off the request path
    while not logged() >= {200, 401, 403} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert logged() >= {200, 401, 403}


WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
}


def test_the_mock_calls_tools_on_all_three_apis(gw: GatewayProcess) -> None:
    """A new user sees a tool call on each API from the built-in mock, streamed in pieces."""
    expected = {"city": "Weather in Paris?", "days": 3}
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    chat_tool: Any = [{"type": "function", "function": {"name": "weather", "parameters": WEATHER}}]
    chunks = list(
        oai(gw).chat.completions.create(
            model="mock-gpt", messages=ask, tools=chat_tool, stream=True
        )
    )
    pieces = [
        c.choices[0].delta.tool_calls[0].function.arguments or ""  # type: ignore[index, union-attr]
        for c in chunks
        if c.choices and c.choices[0].delta.tool_calls
    ]
    assert len(pieces) > 2 and json.loads("".join(pieces)) == expected
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    responses_tool: Any = [{"type": "function", "name": "weather", "parameters": WEATHER}]
    for stream in (True, False):
        if stream:
            with oai(gw).responses.stream(
                model="mock-gpt", input=ask, tools=responses_tool
            ) as events:
                answer = events.get_final_response()
        else:
            answer = oai(gw).responses.create(model="mock-gpt", input=ask, tools=responses_tool)
        call = answer.output[-1]
        assert call.type == "function_call" and call.name == "weather"
        assert json.loads(call.arguments) == expected
    messages_tool: Any = [{"name": "weather", "input_schema": WEATHER}]
    with ant(gw).messages.stream(
        model="mock-gpt", max_tokens=50, messages=ask, tools=messages_tool
    ) as message_stream:
        final = message_stream.get_final_message()
    assert final.stop_reason == "tool_use"
    block = final.content[-1]
    assert block.type == "tool_use" and block.input == expected
    plain = ant(gw).messages.create(
        model="mock-gpt", max_tokens=50, messages=ask, tools=messages_tool
    )
    assert plain.content[-1].type == "tool_use" and plain.content[-1].input == expected


@pytest.mark.parametrize("model", ["gpt-thinking", "claude-thinking"])
def test_reasoning_reaches_both_apis(gw: GatewayProcess, model: str) -> None:
    """Reasoning where both sides have it: Chat's `reasoning_content` and Anthropic's
    thinking (with its signature) as a Responses reasoning item and a Messages thinking
    block, ahead of the text."""
    with oai(gw).responses.stream(model=model, input="x") as stream:
        answer = stream.get_final_response()
    reasoning = answer.output[0]
    assert reasoning.type == "reasoning"
    summary = "".join(part.text for part in reasoning.summary)
    assert summary == "Let me think."
    assert answer.output_text == TEXT
    with ant(gw).messages.stream(model=model, max_tokens=100, messages=USER) as messages:
        final = messages.get_final_message()
    thinking = final.content[0]
    assert thinking.type == "thinking" and thinking.thinking == "Let me think."
    if model == "claude-thinking":
        assert thinking.signature == "sig-fake"  # passed through, as Anthropic sent it
    assert final.content[1].type == "text" and final.content[1].text == TEXT


# --- a client that leaves -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("api", "model"),
    [
        ("responses", "gpt-paced"),
        ("messages", "gpt-paced"),
        ("messages", "claude-paced"),
        ("responses", "claude-paced"),
        ("responses", "gptr-paced"),
    ],
)
def test_disconnect_cancels_the_upstream_within_a_second(
    gw: GatewayProcess, upstream: FakeUpstream, api: str, model: str
) -> None:
    if api == "responses":
        path, body = "/v1/responses", {"model": model, "input": "x", "stream": True}
    else:
        path = "/v1/messages"
        body = {"model": model, "max_tokens": 100, "messages": USER, "stream": True}
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", gw.url + path, headers={"x-api-key": KEY_A}, json=body) as response,
    ):
        assert response.status_code == 200
        deltas = 0
        for line in response.iter_lines():
            deltas += "delta" in line and line.startswith("data: ")
            if deltas == 3:
                break
        seen = last_seen(upstream, "pace_ms=50")
        closed_at = time.monotonic()
    assert upstream.wait_for(lambda: seen.ended is not None, timeout=2)
    assert seen.disconnected
    assert seen.ended is not None and seen.ended - closed_at < 1.0
    assert seen.chunks_sent < 40


def test_the_request_log_names_the_route(gw: GatewayProcess) -> None:
    oai(gw).responses.create(model="gpt-test", input="x")
    ant(gw).messages.create(model="gpt-test", max_tokens=10, messages=USER)

    def routes() -> set[str]:
        lines = gw.output().splitlines()
        return {json.loads(line).get("route") for line in lines if '"request"' in line}

    deadline = time.monotonic() + 5  # the request log writes in batches, off the request path
    while not {"responses", "messages"} <= routes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert {"responses", "messages"} <= routes()


def test_requests_are_counted_by_the_api_the_client_called(gw: GatewayProcess) -> None:
    oai(gw).responses.create(model="gpt-test", input="x")
    ant(gw).messages.create(model="gpt-test", max_tokens=10, messages=USER)
    oai(gw).chat.completions.create(model="gpt-test", messages=USER)
    body = httpx.get(gw.url + "/metrics").text
    for api in ("responses", "messages", "chat"):
        assert f'api="{api}"' in body


def tokens(gw: GatewayProcess, model: str, direction: str) -> float:
    text = httpx.get(gw.url + "/metrics").text
    labels = (f'model="{model}"', 'key_id="team-a"', f'direction="{direction}"')
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("gateway_tokens_total{") and all(label in line for label in labels)
    )


@pytest.mark.parametrize("model", ["gpt-test", "claude-test", "gptr-test"])
def test_each_route_charges_the_upstreams_usage(gw: GatewayProcess, model: str) -> None:
    """Settlement on every route: the key is charged the usage the upstream reported (11 in,
    12 out), streamed or not, translated or passed through."""
    before = tokens(gw, model, "prompt"), tokens(gw, model, "completion")
    list(oai(gw).responses.create(model=model, input="x", stream=True))
    oai(gw).responses.create(model=model, input="x")
    if not model.startswith("gptr"):
        with ant(gw).messages.stream(model=model, max_tokens=50, messages=USER) as stream:
            stream.get_final_message()
        ant(gw).messages.create(model=model, max_tokens=50, messages=USER)
    calls = 2 if model.startswith("gptr") else 4
    after = tokens(gw, model, "prompt"), tokens(gw, model, "completion")
    assert (after[0] - before[0], after[1] - before[1]) == (11 * calls, 12 * calls)


@pytest.mark.parametrize("model", ["gpt-truncate", "claude-truncate"])
def test_an_upstream_that_drops_mid_stream_fails_in_each_api(
    gw: GatewayProcess, model: str
) -> None:
    """The gateway's own mid-stream failure (the upstream's connection dropped before its
    answer finished): `response.failed` for a Responses client, an `event: error` the
    `anthropic` SDK raises, after the text received so far. The key is charged what was
    relayed, and the prompt Anthropic counted at the start when it did."""
    before = tokens(gw, model, "prompt"), tokens(gw, model, "completion")
    events = list(oai(gw).responses.create(model=model, input="x", stream=True))
    assert events[-1].type == "response.failed"
    assert "response.completed" not in [e.type for e in events]
    pieces: list[str] = []
    with (
        pytest.raises(anthropic.APIStatusError),
        ant(gw).messages.stream(model=model, max_tokens=100, messages=USER) as stream,
    ):
        pieces.extend(stream.text_stream)
    assert "".join(pieces) == "".join(text_tokens(5))
    after = tokens(gw, model, "prompt"), tokens(gw, model, "completion")
    assert after[1] - before[1] == 2 * 5
    if model.startswith("claude"):
        assert after[0] - before[0] == 2 * 11


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/responses", {"model": "gpt-pause", "input": "x", "stream": True}),
        (
            "/v1/messages",
            {"model": "gpt-pause", "max_tokens": 50, "messages": USER, "stream": True},
        ),
    ],
)
def test_keepalives_during_upstream_silence_on_each_api(
    gw: GatewayProcess, path: str, body: dict[str, Any]
) -> None:
    """An upstream that pauses 1.5 s mid-answer: SSE comments keep the connection alive,
    and the SDKs, which ignore comments, still get the whole text."""
    raw = httpx.post(gw.url + path, headers={"x-api-key": KEY_A}, json=body, timeout=10).text
    assert ": keep-alive" in raw
    if path == "/v1/responses":
        events = list(oai(gw).responses.create(model="gpt-pause", input="x", stream=True))
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    else:
        with ant(gw).messages.stream(model="gpt-pause", max_tokens=50, messages=USER) as stream:
            text = "".join(stream.text_stream)
    assert text == TEXT


def test_nothing_is_left_open_after_all_of_the_above(gw: GatewayProcess) -> None:
    def open_requests() -> int:
        return int(httpx.get(gw.url + "/healthz").json()["open_requests"])

    deadline = time.monotonic() + 5
    while open_requests() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_requests() == 0


def test_a_responses_pass_through_cut_short_ends_with_response_failed(
    gw: GatewayProcess,
) -> None:
    """Relaying a Responses upstream's own bytes, the gateway's own failure (the upstream
    dropped) is that response's `response.failed` (its id, numbered after the upstream's
    last event), never `response.completed`."""
    events = list(oai(gw).responses.create(model="gptr-truncate", input="x", stream=True))
    failed = events[-1]
    assert failed.type == "response.failed"
    assert failed.sequence_number == events[-2].sequence_number + 1
    assert failed.response.id == events[0].response.id  # type: ignore[union-attr]
    assert failed.response.status == "failed" and failed.response.error is not None
    assert "response.completed" not in [e.type for e in events]
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "".join(text_tokens(5))
