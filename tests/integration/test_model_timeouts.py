"""Per-model and per-deployment timeouts through the real server: models on one fake
upstream that answers slowly, each timed by its own `timeouts:` (the rest inherited), on
every ingress API, across a fallback."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway_proc import KEY_A, GatewayProcess, test_config

AUTH = {"authorization": f"Bearer {KEY_A}"}

SLOW_THINKER = "stall?at=2&stall_s=1&ttft_ms=1000&n=4"
"""First event after 1 s, then 1 s of silence mid-answer: past the gateway's 0.6 s twice."""
LATE_FIRST = "text?n=3&ttft_ms=300"
LONG_SILENCE = "stall?at=2&stall_s=1&n=4"
SHORT_SILENCE = "stall?at=2&stall_s=0.3&n=4"
PACED = "text?n=20&pace_ms=60"
"""About 1.2 s of tokens, none more than 60 ms apart."""

MODELS: list[dict[str, Any]] = [
    {
        "name": "thinker",
        "upstream_model": SLOW_THINKER,
        "timeouts": {"first_token": 2.5, "idle": 2.5},
    },
    {"name": "thinker-untuned", "upstream_model": SLOW_THINKER},
    {"name": "strict", "upstream_model": LATE_FIRST, "timeouts": {"first_token": 0.1}},
    {"name": "strict-untuned", "upstream_model": LATE_FIRST},
    {"name": "patient", "upstream_model": LONG_SILENCE, "timeouts": {"idle": 2.5}},
    {"name": "patient-untuned", "upstream_model": LONG_SILENCE},
    {"name": "restless", "upstream_model": SHORT_SILENCE, "timeouts": {"idle": 0.1}},
    {"name": "restless-untuned", "upstream_model": SHORT_SILENCE},
    {"name": "brief", "upstream_model": PACED, "timeouts": {"total": 0.4}},
    {"name": "brief-untuned", "upstream_model": PACED},
    {
        # Its own first-token timeout fails it at once; the fallback answers under its own.
        "name": "hasty",
        "upstream_model": LATE_FIRST,
        "timeouts": {"first_token": 0.1},
        "fallbacks": ["thinker"],
    },
    {
        # The deployment's first_token over the model's, the model's idle over the gateway's.
        "name": "split",
        "timeouts": {"first_token": 0.1, "idle": 2.5},
        "deployments": [
            {"provider": "fake", "upstream_model": SLOW_THINKER, "timeouts": {"first_token": 2.5}}
        ],
    },
]


@pytest.fixture(scope="module")
def timed(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    config = test_config(
        upstream.url, timeouts={"connect": 2, "first_token": 0.6, "idle": 0.6, "total": 30}
    )
    config["providers"][0]["max_retries"] = 0  # one attempt per deployment: timed exactly
    config["models"] += [m if "deployments" in m else {"provider": "fake", **m} for m in MODELS]
    with GatewayProcess(config, tmp_path_factory.mktemp("model-timeouts")) as proc:
        yield proc


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
        **extra,
    }


BODIES: dict[str, Any] = {
    "/v1/chat/completions": chat,
    "/v1/completions": lambda model, **extra: {"model": model, "prompt": "hi", **extra},
    "/v1/responses": lambda model, **extra: {"model": model, "input": "hi", **extra},
    "/v1/messages": lambda model, **extra: {
        "model": model,
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "hi"}],
        **extra,
    },
}


def stream_lines(
    gateway: GatewayProcess, model: str, path: str = "/v1/chat/completions"
) -> list[str]:
    with httpx.stream(
        "POST", gateway.url + path, headers=AUTH, json=BODIES[path](model, stream=True), timeout=10
    ) as response:
        assert response.status_code == 200, response.read()
        return [line for line in response.iter_lines() if line]


def data_of(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in lines if line.startswith("data: {")]


@pytest.mark.parametrize("path", list(BODIES))
@pytest.mark.parametrize("stream", [True, False])
def test_a_model_with_a_short_first_token_timeout_gets_504_where_another_answers(
    timed: GatewayProcess, path: str, stream: bool
) -> None:
    # One upstream, first event (or whole answer) after 0.3 s: the gateway's 0.6 s lets it
    # through, `strict`'s own 0.1 s does not.
    started = time.monotonic()
    r = httpx.post(
        timed.url + path, headers=AUTH, json=BODIES[path]("strict", stream=stream), timeout=10
    )
    assert r.status_code == 504, r.text
    if path == "/v1/messages":
        assert r.json()["type"] == "error"
        assert r.json()["error"]["type"] == "timeout_error"
        assert "0.1 s" in r.json()["error"]["message"] or not stream
    else:
        error = r.json()["error"]
        assert (error["type"], error["code"]) == ("api_error", "upstream_timeout")
        assert "0.1 s" in error["message"] or not stream
    assert time.monotonic() - started < 0.3 + 0.5
    r = httpx.post(
        timed.url + path,
        headers=AUTH,
        json=BODIES[path]("strict-untuned", stream=stream),
        timeout=10,
    )
    assert r.status_code == 200, r.text


def test_embeddings_are_timed_by_their_models_first_token_timeout(
    timed: GatewayProcess,
) -> None:
    body = {"input": "hi"}
    r = httpx.post(
        timed.url + "/v1/embeddings", headers=AUTH, json={"model": "strict", **body}, timeout=10
    )
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "upstream_timeout"
    r = httpx.post(
        timed.url + "/v1/embeddings",
        headers=AUTH,
        json={"model": "strict-untuned", **body},
        timeout=10,
    )
    assert r.status_code == 200, r.text


def test_a_reasoning_model_waits_longer_while_the_others_keep_the_gateways_timeouts(
    timed: GatewayProcess,
) -> None:
    lines = stream_lines(timed, "thinker")
    assert lines[-1] == "data: [DONE]"
    r = httpx.post(
        timed.url + "/v1/chat/completions",
        headers=AUTH,
        json=chat("thinker-untuned"),
        timeout=10,
    )
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "upstream_timeout"
    assert "0.6 s" in r.json()["error"]["message"]


FINISHED = {
    "/v1/chat/completions": "data: [DONE]",
    "/v1/messages": "event: message_stop",
    "/v1/responses": "event: response.completed",
}
FAILED = {
    "/v1/chat/completions": '"code":"idle_timeout"',
    "/v1/messages": "event: error",
    "/v1/responses": "event: response.failed",
}


@pytest.mark.parametrize("path", list(FINISHED))
def test_an_idle_timeout_of_a_model_ends_its_stream_and_not_anothers(
    timed: GatewayProcess, path: str
) -> None:
    def ended(model: str) -> tuple[bool, bool, str]:
        lines = stream_lines(timed, model, path)
        text = "\n".join(lines)
        return FINISHED[path] in lines, FAILED[path] in text, text

    # 0.3 s of silence mid-answer: `restless` (0.1 s) is cut, the gateway's 0.6 s is not.
    finished, failed, text = ended("restless")
    assert (finished, failed) == (False, True)
    assert "the upstream sent nothing for 0.1 s" in text
    assert ended("restless-untuned")[:2] == (True, False)
    # 1 s of silence: `patient` (2.5 s) finishes, the gateway's 0.6 s cuts the other.
    assert ended("patient")[:2] == (True, False)
    finished, failed, text = ended("patient-untuned")
    assert (finished, failed) == (False, True)
    assert "the upstream sent nothing for 0.6 s" in text


def test_a_models_total_timeout_ends_its_stream(timed: GatewayProcess) -> None:
    cut = stream_lines(timed, "brief")
    error = data_of(cut)[-1]["error"]
    assert error["code"] == "upstream_timeout"
    assert "total timeout (0.4 s)" in error["message"]
    assert stream_lines(timed, "brief-untuned")[-1] == "data: [DONE]"


def test_a_fallback_is_timed_by_its_own_models_timeouts(
    timed: GatewayProcess, upstream: FakeUpstream
) -> None:
    # `hasty`'s 0.1 s fails its own attempt; the fallback `thinker` takes 1 s to its first
    # event and is silent 1 s mid-answer, which neither `hasty`'s timeouts nor the
    # gateway's would let through.
    before = len(upstream.seen)
    lines = stream_lines(timed, "hasty")
    assert lines[-1] == "data: [DONE]"
    assert [s.body["model"] for s in upstream.seen[before:]] == [LATE_FIRST, SLOW_THINKER]


def test_a_deployments_timeouts_override_its_models_field_by_field(
    timed: GatewayProcess,
) -> None:
    lines = stream_lines(timed, "split")
    assert lines[-1] == "data: [DONE]"
