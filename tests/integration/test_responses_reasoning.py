"""Reasoning through the Responses API pass-through, end to end: the official `openai`
SDK against the real `gateway serve`, in front of a provider declared
`apis: [chat, responses]` whose answer is a reasoning model's, written by hand in OpenAI's
wire format (tests/support/fake_responses.py). Then what a Chat client and a Messages
client (with `thinking`) get from that same provider."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.support.fake_responses import SUMMARY, encrypted_content, reasoning_events
from tests.support.fake_upstream import FakeUpstream, text_tokens
from tests.support.gateway_proc import KEY_A, GatewayProcess, test_config

PRICE = {"input": 2.0, "output": 8.0}
REASONING_TOKENS = 7
TEXT = "".join(text_tokens(6))
ENCRYPTED: Any = ["reasoning.encrypted_content"]


def reasoner(upstream: FakeUpstream) -> dict[str, Any]:
    """The provider serving both OpenAI APIs, in front of the fake."""
    return {
        "name": "fake-reasoner",
        "type": "openai",
        "base_url": upstream.url + "/v1",
        "api_key": "sk-upstream-secret-value",
        "apis": ["chat", "responses"],
    }


@pytest.fixture(scope="module")
def gw(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    config = test_config(upstream.url)
    config["timeouts"]["keepalive"] = 0.4
    config["providers"].append(reasoner(upstream))
    target = f"reasoning?n=6&reasoning={REASONING_TOKENS}"
    # One alias per test, so that each finds its own request log lines by model.
    names = ("o-events", "o-sdk", "o-plain", "o-trip", "o-log", "o-chat", "o-messages")
    config["models"] += [
        {"name": name, "provider": "fake-reasoner", "upstream_model": f"{target}&as={name}"}
        for name in names
    ]
    paced = f"reasoning?n=1&reasoning={REASONING_TOKENS}"
    config["models"] += [
        {
            "name": "o-paced",
            "provider": "fake-reasoner",
            "upstream_model": f"{paced}&ttft_ms=200&pace_ms=150&as=o-paced",
        },
        {
            "name": "o-think",
            "provider": "fake-reasoner",
            "upstream_model": f"{target}&stall_s=1.5&as=o-think",
        },
    ]
    config["pricing"] = {name: PRICE for name in names}
    with GatewayProcess(config, tmp_path_factory.mktemp("reasoning")) as proc:
        yield proc


@pytest.fixture
def oai(gw: GatewayProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY_A, max_retries=0) as client:
        yield client


def seen_for(upstream: FakeUpstream, alias: str) -> list[Any]:
    return [s for s in upstream.seen if f"as={alias}" in str(s.body.get("model"))]


def log_lines(gw: GatewayProcess, model: str, n: int) -> list[dict[str, Any]]:
    """The request log's lines of `model`, once there are `n` (it is written in batches)."""
    deadline = time.monotonic() + 10
    while True:
        lines = [
            json.loads(raw)
            for raw in gw.output().splitlines()
            if raw.startswith("{") and '"event":"request"' in raw
        ]
        mine = [line for line in lines if line.get("model") == model]
        if len(mine) >= n or time.monotonic() > deadline:
            assert len(mine) >= n, f"{len(mine)} request log lines of {model}, wanted {n}"
            return mine
        time.sleep(0.02)


def test_every_reasoning_event_reaches_the_client_as_the_upstream_sent_it(
    gw: GatewayProcess, upstream: FakeUpstream
) -> None:
    """The pass-through relays the reasoning item, its summary parts and deltas and the
    `encrypted_content` as the upstream's own bytes, every event, in order."""
    body = {
        "model": "o-events",
        "input": "x",
        "stream": True,
        "store": False,
        "include": ENCRYPTED,
    }
    raw = httpx.post(gw.url + "/v1/responses", headers={"x-api-key": KEY_A}, json=body)
    assert raw.status_code == 200
    (seen,) = seen_for(upstream, "o-events")
    assert seen.path == "/v1/responses"
    assert seen.body["include"] == ENCRYPTED and seen.body["store"] is False
    sent = list(reasoning_events(seen.body, text_tokens(6), REASONING_TOKENS))
    assert raw.content == b"".join(sent)
    assert raw.content.count(encrypted_content().encode()) == 2  # item.done, completed


def test_the_sdk_stream_sees_reasoning_then_text_with_rising_sequence_numbers(
    oai: openai.OpenAI,
) -> None:
    events = list(
        oai.responses.create(model="o-sdk", input="x", stream=True, store=False, include=ENCRYPTED)
    )
    assert [e.sequence_number for e in events] == list(range(len(events)))
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_summary_part.added",
    ]
    assert kinds.index("response.reasoning_summary_text.delta") < kinds.index(
        "response.output_text.delta"
    )
    assert kinds[-1] == "response.completed"
    deltas = [e.delta for e in events if e.type == "response.reasoning_summary_text.delta"]
    assert deltas == [delta for part in SUMMARY for delta in part]
    summary_parts = [
        (e.summary_index, e.part.text)
        for e in events
        if e.type == "response.reasoning_summary_part.done"
    ]
    assert summary_parts == [(i, "".join(part)) for i, part in enumerate(SUMMARY)]
    item_done = next(e for e in events if e.type == "response.output_item.done")
    assert item_done.item.type == "reasoning"
    assert item_done.item.encrypted_content == encrypted_content()
    final = events[-1].response
    assert final.output_text == TEXT
    assert final.usage is not None
    assert final.usage.output_tokens_details.reasoning_tokens == REASONING_TOKENS

    with oai.responses.stream(model="o-sdk", input="x", store=False, include=ENCRYPTED) as s:
        answer = s.get_final_response()
    reasoning = answer.output[0]
    assert reasoning.type == "reasoning"
    assert [p.text for p in reasoning.summary] == ["".join(part) for part in SUMMARY]
    assert reasoning.encrypted_content == encrypted_content()
    assert answer.output_text == TEXT


def test_a_plain_answer_carries_the_reasoning_item_and_its_tokens(oai: openai.OpenAI) -> None:
    answer = oai.responses.create(model="o-plain", input="x", store=False, include=ENCRYPTED)
    reasoning = answer.output[0]
    assert reasoning.type == "reasoning"
    assert reasoning.encrypted_content == encrypted_content()
    assert answer.output_text == TEXT
    assert answer.usage is not None
    assert answer.usage.output_tokens_details.reasoning_tokens == REASONING_TOKENS
    # Without `include`, OpenAI (and the fake) leave the blob out: nothing is made up.
    bare = oai.responses.create(model="o-plain", input="x")
    assert bare.output[0].type == "reasoning" and bare.output[0].encrypted_content is None


@pytest.mark.parametrize("stream", [True, False])
def test_encrypted_content_round_trips_to_the_upstream_byte_identical(
    oai: openai.OpenAI, upstream: FakeUpstream, stream: bool
) -> None:
    """The stateless multi-turn pattern (`store: false`): the reasoning item of one answer,
    passed back as input, reaches the upstream as the same bytes."""
    if stream:
        with oai.responses.stream(
            model="o-trip", input="x", store=False, include=ENCRYPTED
        ) as first_stream:
            first = first_stream.get_final_response()
    else:
        first = oai.responses.create(model="o-trip", input="x", store=False, include=ENCRYPTED)
    # The next turn's input, as OpenAI's docs show it: the question, the whole output
    # (reasoning item and message) and the new question.
    items = [out.model_dump(exclude_none=True) for out in first.output]
    assert [i["type"] for i in items] == ["reasoning", "message"]
    assert items[0]["encrypted_content"] == encrypted_content()
    turn: Any = [
        {"role": "user", "content": "x"},
        *items,
        {"role": "user", "content": "And then?"},
    ]
    before = len(seen_for(upstream, "o-trip"))
    oai.responses.create(model="o-trip", input=turn, store=False, include=ENCRYPTED)
    seen = seen_for(upstream, "o-trip")[before]
    assert seen.body["input"] == turn
    assert b'"encrypted_content":"' + encrypted_content().encode() + b'"' in seen.raw


def test_reasoning_tokens_reach_the_request_log_and_the_spend(
    oai: openai.OpenAI, gw: GatewayProcess
) -> None:
    list(oai.responses.create(model="o-log", input="x", stream=True))
    oai.responses.create(model="o-log", input="x")
    output = len(text_tokens(6)) + REASONING_TOKENS  # reasoning is part of the output
    cost = (11 * PRICE["input"] + output * PRICE["output"]) / 1e6
    lines = log_lines(gw, "o-log", 2)
    assert sorted(line["stream"] for line in lines) == [False, True]
    for line in lines:
        assert line["route"] == "responses" and line["usage_reported"]
        assert (line["prompt_tokens"], line["completion_tokens"]) == (11, output)
        assert line["reasoning_tokens"] == REASONING_TOKENS
        assert abs(line["cost_usd"] - cost) < 1e-9
    metrics = httpx.get(gw.url + "/metrics", timeout=10).text
    spent = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("gateway_spend_usd_total{") and 'model="o-log"' in line
    )
    assert abs(spent - 2 * cost) < 1e-9


def test_ttft_is_the_first_events_not_the_first_texts(
    oai: openai.OpenAI, gw: GatewayProcess
) -> None:
    """The upstream sends `response.created` after 200 ms and every later event 150 ms
    apart: the first summary delta comes at about 800 ms, the first text delta at about
    2.5 s. The recorded time to first token is the first event's, as for every stream."""
    events = list(oai.responses.create(model="o-paced", input="x", stream=True))
    assert events[-1].type == "response.completed"
    (line,) = log_lines(gw, "o-paced", 1)
    assert 200 <= line["ttft_ms"] < 650, line["ttft_ms"]
    assert line["duration_ms"] > 2000


def test_silent_reasoning_is_bridged_by_keepalives_the_sdk_ignores(
    gw: GatewayProcess, oai: openai.OpenAI
) -> None:
    """A reasoning model is silent while it thinks (here 1.5 s after its reasoning item
    opened; `timeouts.keepalive` is 0.4 s): the gateway's SSE comments keep the stream
    open and the SDK sees every event, the summary and the text as sent."""
    body = {"model": "o-think", "input": "x", "stream": True}
    raw = httpx.post(gw.url + "/v1/responses", headers={"x-api-key": KEY_A}, json=body)
    comments = [e for e in raw.text.split("\n\n") if e.startswith(":")]
    assert len(comments) >= 2, raw.text[:500]
    with oai.responses.stream(model="o-think", input="x") as stream:
        kinds = [event.type for event in stream]
        answer = stream.get_final_response()
    assert kinds.count("response.reasoning_summary_text.delta") == 4
    assert [p.text for p in answer.output[0].summary] == ["".join(part) for part in SUMMARY]
    assert answer.output_text == TEXT
    for line in log_lines(gw, "o-think", 2):
        assert line["outcome"] == "completed" and line["reasoning_tokens"] == REASONING_TOKENS


def test_a_chat_client_gets_the_chat_api_and_the_reasoning_token_count(
    gw: GatewayProcess, oai: openai.OpenAI, upstream: FakeUpstream
) -> None:
    """Chat clients go to the provider's Chat API, never translated to Responses: OpenAI's
    Chat API streams no reasoning, so the client gets the text and the reasoning tokens."""
    chunks = list(
        oai.chat.completions.create(
            model="o-chat",
            messages=[{"role": "user", "content": "x"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    (seen,) = seen_for(upstream, "o-chat")
    assert seen.path == "/v1/chat/completions"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == TEXT
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == REASONING_TOKENS
    (line,) = log_lines(gw, "o-chat", 1)
    assert line["reasoning_tokens"] == REASONING_TOKENS


def test_a_messages_client_with_thinking_gets_text_and_no_thinking_block(
    gw: GatewayProcess, upstream: FakeUpstream
) -> None:
    """A Messages client goes to the provider's Chat API too; `thinking` becomes a
    `reasoning_effort`. OpenAI's Chat API returns no reasoning text, so there is no
    thinking block to give (none is made up); the reasoning tokens are in the output."""
    with (
        anthropic.Anthropic(base_url=gw.url, api_key=KEY_A, max_retries=0) as client,
        client.messages.stream(
            model="o-messages",
            max_tokens=4096,
            thinking={"type": "enabled", "budget_tokens": 2048},
            messages=[{"role": "user", "content": "x"}],
        ) as stream,
    ):
        final = stream.get_final_message()
    (seen,) = seen_for(upstream, "o-messages")
    assert seen.path == "/v1/chat/completions"
    assert seen.body.get("reasoning_effort") in ("low", "medium", "high")
    assert [block.type for block in final.content] == ["text"]
    # The upstream's completion_tokens (the fake's Chat usage counts the text alone).
    assert final.usage.output_tokens == len(text_tokens(6))
    (line,) = log_lines(gw, "o-messages", 1)
    assert line["reasoning_tokens"] == REASONING_TOKENS


def test_silent_reasoning_past_the_idle_timeout_ends_in_response_failed(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """The idle timeout counts the upstream's silence, keep-alives or not: a model that
    reasons silently longer than `timeouts.idle` is cut off, and the client's SDK sees a
    `response.failed` after the reasoning item opened, never a `response.completed`."""
    config = test_config(upstream.url)
    config["timeouts"].update(keepalive=0.2, idle=0.6)
    config["providers"].append(reasoner(upstream))
    config["models"].append(
        {
            "name": "o-long-think",
            "provider": "fake-reasoner",
            "upstream_model": "reasoning?n=2&stall_s=3&as=o-long-think",
        }
    )
    with (
        GatewayProcess(config, tmp_path) as gw,
        openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY_A, max_retries=0) as client,
    ):
        events = list(client.responses.create(model="o-long-think", input="x", stream=True))
        kinds = [event.type for event in events]
        assert kinds == [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.failed",
        ]
        (line,) = log_lines(gw, "o-long-think", 1)
        assert line["outcome"] == "idle_timeout"
    assert upstream.wait_for(lambda: seen_for(upstream, "o-long-think")[0].disconnected)
