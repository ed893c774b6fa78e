"""What the relay tells clients and the log, through the real server (issue 15, items 5-7):
no upstream credential comes back out, a whole answer is `completed` however the client
leaves, and usage reaches only a client that asked for it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.support.fake_clouds import FakeAzure, FakeGemini
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway_proc import KEY_A, GatewayProcess, test_config

AUTH = {"authorization": f"Bearer {KEY_A}"}
MESSAGES = [{"role": "user", "content": "hi"}]

# Keys whose JSON-escaped and URL-encoded forms differ from the key as sent; the canary
# survives every encoding, so a leak in any form shows as the canary.
CANARY = "LEAKCANARY"
OPENAI_KEY = 'sk-proj/Q9x+k"W\\mT=7&' + CANARY + "1"
ANTHROPIC_KEY = "sk-ant-api03/R8+y=" + CANARY + "2"
HEADER_VALUE = "Bearer tok-" + CANARY + "3"
AZURE_KEY = 'az/Q9x+k"W\\mT=7&' + CANARY + "4"  # sent as `api-key`
GEMINI_KEY = "AIza/R8+y=" + CANARY + "5"
CODES = (400, 404, 422, 429, 500)
ESCAPES = {404: "&esc=slash", 422: "&esc=u"}  # `\/` in the JSON; `\u0073k-` for `sk-`


@pytest.fixture(scope="module", params=["native", "aiohttp"])
def trust_gateway(
    request: pytest.FixtureRequest, upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """Both ways a stream is relayed: pushed from the native transport's callbacks, and
    iterated (aiohttp)."""
    config = test_config(
        upstream.url,
        log_bodies=True,
        upstream_transport=request.param,
        timeouts={"connect": 2, "first_token": 10, "idle": 2, "keepalive": 0.5, "total": 30},
    )
    openai_provider, anthropic_provider = config["providers"][:2]
    openai_provider |= {
        "api_key": OPENAI_KEY,
        "headers": {"X-Secret-Token": HEADER_VALUE},
        "max_retries": 0,
    }
    anthropic_provider |= {"api_key": ANTHROPIC_KEY, "max_retries": 0}
    for short, provider in (("oa", "fake"), ("an", "fake-anthropic")):
        models = {f"echo-{short}-{c}": f"echokey?code={c}{ESCAPES.get(c, '')}" for c in CODES}
        models |= {
            f"echo-{short}-ok": "echokey",
            f"hold-{short}": "text?n=5&hold=1&stall_s=20",
            f"cut-{short}": "text?n=5&hold=cut",
        }
        config["models"] += [
            {"name": name, "provider": provider, "upstream_model": upstream_model}
            for name, upstream_model in models.items()
        ]
    config["models"] += [
        {"name": "usage-litellm", "provider": "fake", "upstream_model": "text?n=3&usage=litellm"},
        {"name": "usage-finish", "provider": "fake", "upstream_model": "text?n=3&usage=finish"},
    ]
    with GatewayProcess(config, tmp_path_factory.mktemp("trust")) as proc:
        yield proc


def body(model: str, stream: bool = True, **extra: object) -> dict[str, object]:
    return {"model": model, "stream": stream, "messages": MESSAGES, **extra}


def log_records(gateway: GatewayProcess, model: str) -> list[dict[str, Any]]:
    records = []
    for line in gateway.output().splitlines():
        if line.startswith("{") and f'"model":"{model}"' in line.replace(" ", ""):
            record = json.loads(line)
            if record.get("event") == "request" and record.get("model") == model:
                records.append(record)
    return records


def wait_for_record(gateway: GatewayProcess, model: str, count: int = 1) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        records = log_records(gateway, model)
        if len(records) >= count:
            return records[count - 1]
        time.sleep(0.02)
    raise AssertionError(f"no request log line for {model!r}")


def metric(gateway: GatewayProcess, name: str, **labels: str) -> float:
    total = 0.0
    for line in httpx.get(gateway.url + "/metrics").text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# --- item 5: credentials --------------------------------------------------------------------


def _json_parts(raw: bytes, stream: bool) -> list[Any]:
    """Every JSON document the client received: the body, or each SSE event's data."""
    if not raw.startswith(b"data: ") and not (stream and b"\ndata: " in raw):
        return [json.loads(raw)]
    return [
        json.loads(line[6:])
        for line in raw.split(b"\n")
        if line.startswith(b"data: ") and line != b"data: [DONE]"
    ]


def test_no_upstream_credential_reaches_a_client_or_the_request_log(
    trust_gateway: GatewayProcess,
) -> None:
    """Error answers (400, 404, 422, 429, 500) that echo the key, from OpenAI- and
    Anthropic-type upstreams, streamed and not; an echo in a streamed delta and in a
    mid-stream error event; an echo in a plain answer's content."""
    _assert_no_credential_comes_back(trust_gateway, ("oa", "an"))


def _assert_no_credential_comes_back(gateway: GatewayProcess, shorts: tuple[str, ...]) -> None:
    log_start = len(gateway.output())
    cases = [
        (f"echo-{short}-{what}", stream)
        for short in shorts
        for what in (*CODES, "ok")
        for stream in (False, True)
    ]
    answers: list[tuple[str, bool, httpx.Response]] = []
    with httpx.Client(timeout=10) as client:
        for model, stream in cases:
            url = gateway.url + "/v1/chat/completions"
            answers.append(
                (model, stream, client.post(url, headers=AUTH, json=body(model, stream)))
            )
    for model, _ in cases:
        wait_for_record(gateway, model, count=2)
    log = gateway.output()[log_start:]
    leaked = [f"{m} stream={s} -> {r.status_code}" for m, s, r in answers if CANARY in r.text]
    in_log = log.count(CANARY)
    assert not leaked and not in_log, (
        f"{len(leaked)} of {len(cases)} answers carried a credential: {leaked}; "
        f"the request log held it {in_log} times"
    )
    for model, stream, r in answers:
        # The upstream's words still arrive, the credential in them marked, the JSON whole.
        case = f"{model} stream={stream} -> {r.status_code}"
        assert b"[redacted]" in r.content, case
        assert _json_parts(r.content, stream), case
        assert (r.status_code == 200) == model.endswith("-ok"), case
    assert "[redacted]" in log


@pytest.fixture(scope="module")
def cloud_trust_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """The same, with an Azure (`api-key` header) and a Gemini provider."""
    with FakeAzure(AZURE_KEY) as azure, FakeGemini(GEMINI_KEY) as gemini:
        config = test_config(azure.url, log_bodies=True)
        config["providers"] = [
            {"name": "azure", "type": "azure", "base_url": azure.url, "api_key": AZURE_KEY},
            {
                "name": "gemini",
                "type": "gemini",
                "base_url": gemini.url + "/v1beta/openai",
                "api_key": GEMINI_KEY,
            },
        ]
        config["models"] = []
        for short, provider in (("az", "azure"), ("gm", "gemini")):
            models = {f"echo-{short}-{c}": f"echokey?code={c}{ESCAPES.get(c, '')}" for c in CODES}
            models[f"echo-{short}-ok"] = "echokey"
            config["models"] += [
                {"name": name, "provider": provider, "upstream_model": upstream_model}
                for name, upstream_model in models.items()
            ]
        config["keys"] = config["keys"][:1]
        for provider in config["providers"]:
            provider["max_retries"] = 0
        with GatewayProcess(config, tmp_path_factory.mktemp("cloud-trust")) as proc:
            yield proc


def test_no_azure_or_gemini_key_reaches_a_client_or_the_request_log(
    cloud_trust_gateway: GatewayProcess,
) -> None:
    """As above, for Azure's `api-key` header and Gemini's Bearer key."""
    _assert_no_credential_comes_back(cloud_trust_gateway, ("az", "gm"))


# --- item 6: a whole answer is completed -------------------------------------------------------


@pytest.mark.parametrize("model", ["hold-oa", "hold-an"])
def test_client_leaving_after_done_is_completed_and_frees_the_upstream(
    trust_gateway: GatewayProcess, upstream: FakeUpstream, model: str
) -> None:
    """The upstream sends the whole answer, then holds its body open; the client reads to
    `[DONE]` and hangs up."""
    before = len(log_records(trust_gateway, model))
    completed = metric(trust_gateway, "gateway_requests_total", model=model, outcome="completed")
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "POST", trust_gateway.url + "/v1/chat/completions", headers=AUTH, json=body(model)
        ) as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            if line == "data: [DONE]":
                break
        else:
            raise AssertionError("no [DONE]")
        seen = next(s for s in reversed(upstream.seen) if "hold=1" in str(s.body.get("model")))
    record = wait_for_record(trust_gateway, model, count=before + 1)
    assert record["outcome"] == "completed"
    assert record["usage_reported"] is True
    assert (record["prompt_tokens"], record["completion_tokens"]) == (11, 5)
    assert "error" not in record
    after = metric(trust_gateway, "gateway_requests_total", model=model, outcome="completed")
    assert after == completed + 1
    # The upstream's connection, never ended by the upstream, was closed by the gateway.
    assert upstream.wait_for(lambda: seen.ended is not None, timeout=5)
    assert seen.disconnected


@pytest.mark.parametrize("model", ["hold-oa", "hold-an"])
def test_upstream_holding_the_body_after_done_ends_clean_at_the_idle_timeout(
    trust_gateway: GatewayProcess, upstream: FakeUpstream, model: str
) -> None:
    """A client that reads to the end of the response (as the OpenAI SDK drains it) gets
    the answer and its end, no error event after `[DONE]`."""
    before = len(log_records(trust_gateway, model))
    r = httpx.post(
        trust_gateway.url + "/v1/chat/completions", headers=AUTH, json=body(model), timeout=10
    )
    events = [line for line in r.text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert not any('"error"' in e for e in events)
    record = wait_for_record(trust_gateway, model, count=before + 1)
    assert record["outcome"] == "completed"
    assert "error" not in record
    seen = next(s for s in reversed(upstream.seen) if "hold=1" in str(s.body.get("model")))
    assert upstream.wait_for(lambda: seen.ended is not None, timeout=5)


@pytest.mark.parametrize("model", ["cut-oa", "cut-an"])
def test_upstream_dropping_the_connection_after_done_is_still_completed(
    trust_gateway: GatewayProcess, model: str
) -> None:
    before = len(log_records(trust_gateway, model))
    r = httpx.post(
        trust_gateway.url + "/v1/chat/completions", headers=AUTH, json=body(model), timeout=10
    )
    events = [line for line in r.text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert not any('"error"' in e for e in events)
    record = wait_for_record(trust_gateway, model, count=before + 1)
    assert (record["outcome"], record["usage_reported"]) == ("completed", True)


# --- item 7: usage only when asked ---------------------------------------------------------------


@pytest.mark.parametrize("model", ["usage-litellm", "usage-finish"])
def test_usage_reaches_only_a_client_that_asked(trust_gateway: GatewayProcess, model: str) -> None:
    sdk = openai.OpenAI(base_url=trust_gateway.url + "/v1", api_key=KEY_A, max_retries=0)
    chunks = list(sdk.chat.completions.create(model=model, messages=MESSAGES, stream=True))  # type: ignore[arg-type]
    assert [c.usage for c in chunks] == [None] * len(chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "tok0 tok1 tok2 "
    record = wait_for_record(trust_gateway, model)
    assert (record["prompt_tokens"], record["completion_tokens"]) == (11, 3)
    assert record["usage_reported"] is True

    raw = httpx.post(
        trust_gateway.url + "/v1/chat/completions", headers=AUTH, json=body(model), timeout=10
    ).content
    assert b'"usage":{' not in raw and b'"usage": {' not in raw
    assert raw.endswith(b"data: [DONE]\n\n")

    asked = list(
        sdk.chat.completions.create(
            model=model,
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage = [c.usage for c in asked if c.usage is not None]
    assert len(usage) == 1
    assert (usage[0].prompt_tokens, usage[0].completion_tokens) == (11, 3)
