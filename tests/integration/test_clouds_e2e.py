"""Azure OpenAI and Gemini providers through the real `gateway serve`, the official `openai`
SDK as the client, fakes of each cloud's wire format upstream (`tests/support/fake_clouds`)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.support.fake_clouds import FakeAzure, FakeGemini
from tests.support.fake_upstream import text_tokens, tool_arguments
from tests.support.gateway_proc import KEY_A, GatewayProcess, test_config

AZURE_KEY = "azure-key-0123456789abcdef"
GEMINI_KEY = "AIza-gemini-key-0123456789"
MESSAGES = [{"role": "user", "content": "Say something."}]
TEXT5 = "".join(text_tokens(5))
WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}


@pytest.fixture(scope="module")
def azure() -> Iterator[FakeAzure]:
    with FakeAzure(AZURE_KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def gemini() -> Iterator[FakeGemini]:
    with FakeGemini(GEMINI_KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def clouds(
    azure: FakeAzure, gemini: FakeGemini, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    config = test_config(azure.url)
    gemini_url = gemini.url + "/v1beta/openai"
    config["providers"] = [
        {"name": "azure", "type": "azure", "base_url": azure.url, "api_key": AZURE_KEY},
        {
            "name": "azure-v1",
            "type": "azure",
            "base_url": azure.url,
            "api_key": AZURE_KEY,
            "api_version": "v1",
            "apis": ["chat", "responses"],
        },
        {
            "name": "azure-entra",
            "type": "azure",
            "base_url": azure.url + "/",
            "api_key": AZURE_KEY,
            "auth": "bearer",
        },
        {
            "name": "azure-preview",
            "type": "azure",
            "base_url": azure.url,
            "api_key": AZURE_KEY,
            "api_version": "2025-04-01-preview",
            "apis": ["chat", "responses"],
        },
        {"name": "azure-wrong", "type": "azure", "base_url": azure.url, "api_key": "nope-" * 4},
        {"name": "gemini", "type": "gemini", "base_url": gemini_url, "api_key": GEMINI_KEY},
        {"name": "gemini-wrong", "type": "gemini", "base_url": gemini_url, "api_key": "bad-" * 4},
    ]
    for provider in config["providers"]:
        provider["max_retries"] = 0
    models = {
        "az": ("azure", "text?n=5"),
        "az-gap": ("azure", "text?n=3&filter_gap=1&stall_s=0.6"),
        "az-filter": ("azure", "content_filter"),
        "az-embed": ("azure", "embed-deployment"),
        "az-v1": ("azure-v1", "text?n=5"),
        "az-preview": ("azure-preview", "text?n=5"),
        "az-entra": ("azure-entra", "text?n=5"),
        "az-wrong": ("azure-wrong", "text"),
        "gem": ("gemini", "text?n=5"),
        "gem-400": ("gemini", "status?code=400"),
        "gem-429": ("gemini", "status?code=429"),
        "gem-mid": ("gemini", "gemini_midstream"),
        "gem-embed": ("gemini", "embed"),
        "gem-tools": ("gemini", "tools"),
        "gem-wrong": ("gemini-wrong", "text"),
    }
    config["models"] = [
        {"name": name, "provider": provider, "upstream_model": upstream}
        for name, (provider, upstream) in models.items()
    ]
    config["keys"] = config["keys"][:1]
    with GatewayProcess(config, tmp_path_factory.mktemp("clouds")) as proc:
        yield proc


def sdk(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY_A, max_retries=0)


def stream(gateway: GatewayProcess, model: str, **kwargs: Any) -> list[Any]:
    return list(
        sdk(gateway).chat.completions.create(
            model=model,
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            **kwargs,
        )
    )


def text_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def log_record(gateway: GatewayProcess, model: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in reversed(gateway.output().splitlines()):
            if line.startswith("{") and f'"model":"{model}"' in line.replace(" ", ""):
                record = json.loads(line)
                if record.get("event") == "request":
                    return dict(record)
        time.sleep(0.02)
    raise AssertionError(f"no request log line for {model!r}")


# --- Azure -----------------------------------------------------------------------------------


def test_azure_stream_is_clean_openai_for_the_sdk(clouds: GatewayProcess, azure: FakeAzure) -> None:
    """The prompt filter chunk (empty choices) and the annotation-only chunk after the
    finish are dropped; every chunk the SDK sees has a choice with a delta."""
    chunks = stream(clouds, "az")
    assert text_of(chunks) == TEXT5
    assert all(c.choices and c.choices[0].delta is not None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)
    seen = azure.seen[-1]
    assert seen.path == "/openai/deployments/text%3Fn%3D5/chat/completions"
    assert seen.query == "api-version=2024-10-21"
    assert seen.headers["api-key"] == AZURE_KEY
    assert "authorization" not in seen.headers
    assert seen.body["stream_options"] == {"include_usage": True}

    asked = stream(clouds, "az", stream_options={"include_usage": True})
    assert text_of(asked) == TEXT5
    assert asked[-1].choices == []
    assert asked[-1].usage is not None
    assert (asked[-1].usage.prompt_tokens, asked[-1].usage.completion_tokens) == (11, 5)
    record = log_record(clouds, "az")
    assert (record["outcome"], record["prompt_tokens"], record["completion_tokens"]) == (
        "completed",
        11,
        5,
    )


def test_azure_prompt_filter_chunk_does_not_start_the_answer(clouds: GatewayProcess) -> None:
    """Azure sends the prompt filter chunk at once and the first token 0.6 s later: the
    time to first token is the token's."""
    start = time.perf_counter()
    with httpx.stream(
        "POST",
        clouds.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {KEY_A}"},
        json={"model": "az-gap", "stream": True, "messages": MESSAGES},
        timeout=10,
    ) as response:
        lines = (line for line in response.iter_lines() if line.startswith("data: "))
        first = next(lines)
        waited = time.perf_counter() - start
        rest = list(lines)
    assert json.loads(first[6:])["choices"], first
    assert "prompt_filter_results" not in first
    assert waited >= 0.55
    assert rest[-1] == "data: [DONE]"
    assert log_record(clouds, "az-gap")["ttft_ms"] >= 550


def test_azure_plain_answer_and_embeddings(clouds: GatewayProcess, azure: FakeAzure) -> None:
    answer = sdk(clouds).chat.completions.create(model="az", messages=MESSAGES)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == TEXT5
    assert answer.usage is not None and answer.usage.completion_tokens == 5
    assert azure.seen[-1].path == "/openai/deployments/text%3Fn%3D5/chat/completions"

    vectors = sdk(clouds).embeddings.create(model="az-embed", input=["a", "b"])
    assert [len(item.embedding) for item in vectors.data] == [3, 3]
    assert azure.seen[-1].path == "/openai/deployments/embed-deployment/embeddings"
    assert azure.seen[-1].query == "api-version=2024-10-21"


@pytest.mark.parametrize("streamed", [False, True])
def test_azure_content_filter_refusal_reaches_the_sdk_as_its_own_400(
    clouds: GatewayProcess, streamed: bool
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(clouds).chat.completions.create(
            model="az-filter",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=streamed,
        )
    assert caught.value.status_code == 400
    assert caught.value.code == "content_filter"
    assert "content management policy" in caught.value.message
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["innererror"]["code"] == "ResponsibleAIPolicyViolation"


def test_azure_v1_route_serves_chat_and_responses(clouds: GatewayProcess, azure: FakeAzure) -> None:
    assert text_of(stream(clouds, "az-v1")) == TEXT5
    seen = azure.seen[-1]
    assert (seen.path, seen.query, seen.body["model"]) == (
        "/openai/v1/chat/completions",
        "",
        "text?n=5",
    )
    response = sdk(clouds).responses.create(model="az-v1", input="hi")
    assert response.output_text == TEXT5
    assert azure.seen[-1].path == "/openai/v1/responses"
    with sdk(clouds).responses.stream(model="az-v1", input="hi") as events:
        assert events.get_final_response().output_text == TEXT5


def test_azure_classic_route_serves_responses_with_the_deployment_in_the_body(
    clouds: GatewayProcess, azure: FakeAzure
) -> None:
    with sdk(clouds).responses.stream(model="az-preview", input="hi") as events:
        assert events.get_final_response().output_text == TEXT5
    seen = azure.seen[-1]
    assert (seen.path, seen.query) == ("/openai/responses", "api-version=2025-04-01-preview")
    assert seen.body["model"] == "text?n=5"
    assert text_of(stream(clouds, "az-preview")) == TEXT5
    assert azure.seen[-1].path == "/openai/deployments/text%3Fn%3D5/chat/completions"


def test_azure_entra_token_goes_as_bearer(clouds: GatewayProcess, azure: FakeAzure) -> None:
    assert text_of(stream(clouds, "az-entra")) == TEXT5
    seen = azure.seen[-1]
    assert seen.headers["authorization"] == f"Bearer {AZURE_KEY}"
    assert "api-key" not in seen.headers
    assert seen.path == "/openai/deployments/text%3Fn%3D5/chat/completions"  # no `//`


@pytest.mark.parametrize("model", ["az-wrong", "gem-wrong"])
def test_a_refused_upstream_key_is_the_gateways_502(clouds: GatewayProcess, model: str) -> None:
    for streamed in (False, True):
        with pytest.raises(openai.InternalServerError) as caught:
            sdk(clouds).chat.completions.create(
                model=model,
                messages=MESSAGES,  # type: ignore[arg-type]
                stream=streamed,
            )
        assert caught.value.status_code == 502
        assert caught.value.code == "upstream_error"
        assert "credentials" in caught.value.message


# --- Gemini ----------------------------------------------------------------------------------


def test_gemini_stream_and_answer(clouds: GatewayProcess, gemini: FakeGemini) -> None:
    """Gemini's last chunk holds the last token, the finish and the usage: the SDK gets the
    text whole, no usage unasked, and asked, the usage in a chunk of its own."""
    chunks = stream(clouds, "gem")
    assert text_of(chunks) == TEXT5
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)
    seen = gemini.seen[-1]
    assert seen.path == "/v1beta/openai/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {GEMINI_KEY}"

    asked = stream(clouds, "gem", stream_options={"include_usage": True})
    assert text_of(asked) == TEXT5
    assert asked[-2].choices[0].finish_reason == "stop" and asked[-2].usage is None
    assert asked[-1].choices == []
    assert asked[-1].usage is not None
    assert (asked[-1].usage.prompt_tokens, asked[-1].usage.completion_tokens) == (11, 5)
    assert log_record(clouds, "gem")["completion_tokens"] == 5

    answer = sdk(clouds).chat.completions.create(model="gem", messages=MESSAGES)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == TEXT5
    vectors = sdk(clouds).embeddings.create(model="gem-embed", input="a")
    assert len(vectors.data[0].embedding) == 3
    assert gemini.seen[-1].path == "/v1beta/openai/embeddings"


def test_gemini_streamed_tool_call_ends_with_tool_calls(clouds: GatewayProcess) -> None:
    """Gemini ends a streamed tool call with `stop`; OpenAI's clients wait for `tool_calls`."""
    chunks = stream(clouds, "gem-tools", tools=[WEATHER_TOOL])
    calls = [c.choices[0].delta.tool_calls for c in chunks if c.choices]
    arguments = "".join(call[0].function.arguments or "" for call in calls if call)
    assert json.loads(arguments) == tool_arguments()
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_gemini_streamed_tool_call_ends_as_one_for_messages_and_responses_clients(
    clouds: GatewayProcess,
) -> None:
    """The `stop` Gemini ends a tool call with is fixed before the translator reads it: a
    Messages client sees `stop_reason: tool_use`, a Responses client the call, completed."""
    tool: Any = {"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}
    client = anthropic.Anthropic(base_url=clouds.url, api_key=KEY_A, max_retries=0)
    with client.messages.stream(
        model="gem-tools", max_tokens=100, messages=MESSAGES, tools=[tool]
    ) as stream:
        stops = [e.delta.stop_reason for e in stream if e.type == "message_delta"]
        final = stream.get_final_message()
    client.close()
    assert stops == ["tool_use"]
    assert final.stop_reason == "tool_use"
    blocks = [b for b in final.content if b.type == "tool_use"]
    assert len(blocks) == 1 and blocks[0].input == tool_arguments()
    function: Any = {"type": "function", "name": "get_weather", "parameters": tool["input_schema"]}
    with sdk(clouds).responses.stream(model="gem-tools", input="x", tools=[function]) as events:
        final_response = events.get_final_response()
    calls = [item for item in final_response.output if item.type == "function_call"]
    assert final_response.status == "completed"
    assert len(calls) == 1 and json.loads(calls[0].arguments) == tool_arguments()


@pytest.mark.parametrize(
    ("model", "error", "code", "kind"),
    [
        ("gem-400", openai.BadRequestError, "invalid_argument", "invalid_request_error"),
        ("gem-429", openai.RateLimitError, "resource_exhausted", "rate_limit_error"),
    ],
)
@pytest.mark.parametrize("streamed", [False, True])
def test_gemini_list_shaped_errors_arrive_in_openai_shape(
    clouds: GatewayProcess,
    model: str,
    error: type[openai.APIStatusError],
    code: str,
    kind: str,
    streamed: bool,
) -> None:
    with pytest.raises(error) as caught:
        sdk(clouds).chat.completions.create(
            model=model,
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=streamed,
        )
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["message"] == f"fake {model[-3:]}"
    assert (caught.value.code, caught.value.type) == (code, kind)


def test_gemini_error_event_mid_stream_ends_the_stream_with_an_error(
    clouds: GatewayProcess,
) -> None:
    got: list[Any] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in sdk(clouds).chat.completions.create(
            model="gem-mid",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
        ):
            got.append(chunk)
    assert "fake midstream failure" in str(caught.value)
    assert text_of(got) == "".join(text_tokens(3))
    assert log_record(clouds, "gem-mid")["outcome"] == "upstream_error"
