"""Hostile inputs to traces, deployments and upstream limits, through the real `gateway serve`.

- A client's malformed or oversized `traceparent` / `tracestate` never crashes a request
  and never reaches an upstream: an upstream sees only the gateway's own well-formed
  `traceparent` (a new trace when the client's is not one), and no `tracestate`.
- An upstream's absurd `retry-after` and `x-ratelimit-reset-*` (negative, 10^12, garbage,
  a date in 1970, NaN) crash nothing and cool or block a deployment for at most an hour.
- A 429 from every deployment is the client's clean 429, in its API's shape, with
  `retry-after`, for Chat, Responses and Messages clients, streamed or not.
"""

from __future__ import annotations

import math
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from gateway.config import HealthConfig
from gateway.limits.upstream import MAX_OBSERVED_RESET_S, UpstreamLimits, parse_reset
from gateway.routing.health import Health, retry_after
from tests.hostile.hostile_support import assert_nothing_leaked
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway_proc import KEY_A, GatewayProcess, test_config
from tests.support.otlp_receiver import OtlpReceiver

AUTH = {"authorization": f"Bearer {KEY_A}"}
OURS = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-01")
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"

HOSTILE_TRACEPARENTS = [
    f"ff-{TRACE}-{SPAN}-01",  # version ff is invalid
    f"00-{'0' * 32}-{SPAN}-01",  # all-zero trace id
    f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
    f"00-{TRACE.upper()}-{SPAN.upper()}-01",  # upper-case hex
    f"00-{TRACE}-{SPAN}-01-extra",  # version 00 has no more fields
    f"00-{TRACE}-{SPAN}-0x",
    f"00_{TRACE}_{SPAN}_01",
    f"00-{TRACE}-{SPAN}",
    "x" * 1000,
    f"00-{TRACE}-{SPAN}-01-" + "a" * 944,  # 1000 characters
    "00-" + "f" * 997,
    "-" * 1000,
]
HOSTILE_TRACESTATES = [
    "a=" + "x" * 998,
    ",,,==,=",
    ",".join(f"k{i}=v{i}" for i in range(200)),
]
CONTROL_CHARACTERS = ["00-\x01\x02-", "\x7f\x01", "00-" + TRACE + "\x00"]
"""Not HTTP header values at all: the HTTP server's own 400, no upstream request."""


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as otlp:
        yield otlp


@pytest.fixture(scope="module")
def gw(
    fake: FakeUpstream, receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    config = test_config(fake.url, tracing={"otlp_endpoint": receiver.url})
    for provider in config["providers"]:
        provider["max_retries"] = 0
    config["providers"].append(
        {"name": "fake-b", "type": "openai", "base_url": fake.url + "/v1", "max_retries": 0}
    )
    config["models"].append(
        {
            "name": "stormy",
            "deployments": [
                {"provider": "fake", "upstream_model": "text?n=3"},
                {"provider": "fake-b", "upstream_model": "text?n=3"},
                {"provider": "fake-anthropic", "upstream_model": "text?n=3"},
            ],
        }
    )
    config["keys"] = [k for k in config["keys"] if "models" not in k]
    with GatewayProcess(config, tmp_path_factory.mktemp("hostile-traces")) as proc:
        yield proc


def _chat(client: httpx.Client, url: str, model: str, headers: dict[str, str]) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    return client.post(url + "/v1/chat/completions", headers={**AUTH, **headers}, json=body)


def _messages(client: httpx.Client, url: str, headers: dict[str, str]) -> httpx.Response:
    body = {
        "model": "claude-test",
        "max_tokens": 20,
        "messages": [{"role": "user", "content": "hi"}],
    }
    headers = {"x-api-key": KEY_A, "anthropic-version": "2023-06-01", **headers}
    return client.post(url + "/v1/messages", headers=headers, json=body)


def _raw_chat(gw: GatewayProcess, name: str, value: str) -> int:
    """A chat request with a header value no HTTP client library sends: its status."""
    body = b'{"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}'
    port = int(gw.url.rsplit(":", 1)[1])
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        f"authorization: Bearer {KEY_A}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n{name}: {value}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode("latin-1") + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def test_hostile_traceparent_and_tracestate_never_reach_an_upstream(
    gw: GatewayProcess, fake: FakeUpstream
) -> None:
    tried = 0
    with httpx.Client(timeout=10) as client:
        for i, parent in enumerate(HOSTILE_TRACEPARENTS):
            state = HOSTILE_TRACESTATES[i % len(HOSTILE_TRACESTATES)]
            sent = {"traceparent": parent, "tracestate": state}
            for model in ("gpt-test", "claude-test", "messages"):
                since = len(fake.seen)
                if model == "messages":  # an Anthropic client: its headers are passed on
                    response = _messages(client, gw.url, sent)
                else:
                    response = _chat(client, gw.url, model, sent)
                assert response.status_code == 200, (parent, response.text[:300])
                assert_nothing_leaked(response.content)
                (seen,) = fake.seen[since:]
                header = seen.headers.get("traceparent", "")
                match = OURS.fullmatch(header)
                assert match, (parent, header)
                assert match[1] != TRACE and match[2] != SPAN  # a new trace, none of the client's
                assert "tracestate" not in seen.headers
                for value in seen.headers.values():
                    assert parent.strip() not in value and state not in value
                tried += 1
    assert tried == 3 * len(HOSTILE_TRACEPARENTS)
    # A later version with more fields is one (W3C: read its first four), continued; an
    # unsampled one adds no header upstream.
    with httpx.Client(timeout=10) as client:
        since = len(fake.seen)
        later = f"01-{TRACE}-{SPAN}-01-" + "z" * 900
        assert _chat(client, gw.url, "gpt-test", {"traceparent": later}).status_code == 200
        header = fake.seen[since].headers["traceparent"]
        assert header.startswith(f"00-{TRACE}-") and len(header) == 55
        unsampled = f"00-{TRACE}-{SPAN}-00"
        assert _chat(client, gw.url, "gpt-test", {"traceparent": unsampled}).status_code == 200
        assert "traceparent" not in fake.seen[since + 1].headers
    for value in CONTROL_CHARACTERS:
        since = len(fake.seen)
        for name in ("traceparent", "tracestate"):
            status = _raw_chat(gw, name, value)
            assert status in (200, 400), (value, status)
            assert all(
                "\x01" not in v and "\x7f" not in v
                for s in fake.seen[since:]
                for v in s.headers.values()
            )
    assert "Traceback" not in gw.output()


ABSURD_RETRY_AFTER = [
    "-5",
    "1000000000000",
    "garbage",
    "Thu, 01 Jan 1970 00:00:00 GMT",
    "nan",
    "inf",
    "1e400",
    "",
    "Fri, 31 Dec 9999 23:59:59 GMT",
]
ABSURD_RESETS = [
    "-1",
    "1000000000000s",
    "garbage",
    "1970-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "nan",
    "9" * 63 + "h",
    "1e400",
]


def test_absurd_retry_after_and_resets_cool_for_at_most_an_hour() -> None:
    for value in ABSURD_RETRY_AFTER:
        for name in ("retry-after", "retry-after-ms"):
            seconds = retry_after({name: value})
            health = Health(HealthConfig(failures=3, window=30, cooldown=30))
            health.failed(1000.0, seconds)
            assert health.cooled_until <= 1000.0 + 3600, (name, value)
            assert not math.isnan(health.cooled_until)
    now = 1_700_000_000.0
    for value in ABSURD_RESETS:
        reset = parse_reset(value, now)
        assert reset is None or reset >= 0, value
        limits = UpstreamLimits(None, wall_clock=lambda: now)
        limits.observe(
            "m/d",
            {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": value},
        )
        state = limits._deployments["m/d"]  # what `acquire` would wait out
        after = time.monotonic()
        assert state.blocked_until(after) <= after + MAX_OBSERVED_RESET_S, value


@pytest.mark.parametrize("retry", ABSURD_RETRY_AFTER[:4])
def test_a_429_storm_from_every_deployment_is_a_clean_429_in_each_api(
    gw: GatewayProcess, fake: FakeUpstream, retry: str
) -> None:
    fake.fail_next, fake.fail_status, fake.retry_after = 10_000, 429, retry
    fake.fail_headers = {
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": ABSURD_RESETS[hash(retry) % len(ABSURD_RESETS)],
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": "1970-01-01T00:00:00Z",
    }
    oai = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY_A, max_retries=0)
    ant = anthropic.Anthropic(base_url=gw.url, api_key=KEY_A, max_retries=0)
    user: Any = [{"role": "user", "content": "hi"}]
    try:
        for stream in (False, True):
            with pytest.raises(openai.RateLimitError) as chat:
                oai.chat.completions.create(model="stormy", messages=user, stream=stream)
            with pytest.raises(openai.RateLimitError) as responses:
                oai.responses.create(model="stormy", input="hi", stream=stream)
            with pytest.raises(anthropic.RateLimitError) as messages:
                ant.messages.create(model="stormy", max_tokens=20, messages=user, stream=stream)
            for error in (chat.value, responses.value):
                assert error.response.headers.get("retry-after") == "1"
                assert isinstance(error.body, dict) and error.body.get("message")
                assert_nothing_leaked(error.response.content)
            assert messages.value.response.headers.get("retry-after") == "1"
            body = messages.value.response.json()
            assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
            assert_nothing_leaked(messages.value.response.content)
    finally:
        fake.fail_next, fake.retry_after, fake.fail_headers = 0, None, {}
    # Every deployment cooled by a bogus retry-after: the model still answers (the one
    # whose cooldown ends first is tried), and the gateway is up.
    answer = oai.chat.completions.create(model="stormy", messages=user)
    assert answer.choices[0].message.content
    oai.close()
    ant.close()
    assert "Traceback" not in gw.output()
