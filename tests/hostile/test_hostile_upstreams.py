"""Hostile upstreams, through the real server: every broken provider answer gets an honest
outcome and an OpenAI-shaped error, and costs the gateway nothing.

Each case runs against both provider types (the fake upstream answers /v1/messages in
Anthropic's format). Before the first byte a failure is an HTTP status; after it, a
`data: {"error": ...}` event and the end of the stream, never `[DONE]`. After every case the
gateway still answers /healthz, no stream is left open, and its log holds no traceback and
no secret.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import orjson
import pytest

from tests.hostile.hostile_support import (
    LogWatch,
    Probe,
    assert_nothing_leaked,
    error_of,
    metric_value,
    wait_for,
)
from tests.support.fake_upstream import FakeUpstream, Seen
from tests.support.gateway_proc import KEY_A, GatewayProcess, test_config

AUTH = {"authorization": f"Bearer {KEY_A}"}
FORMATS = {"openai": "fake", "anthropic": "fake-anthropic"}
IDLE = 1.5
FIRST_TOKEN = 1.5


@dataclass(frozen=True)
class Case:
    upstream: str
    """The fake upstream's scenario (its model name)."""
    stream: bool
    status: int
    codes: tuple[str | None, ...] = ("upstream_error",)
    """Acceptable error codes (for a 200 stream: of its final error event)."""
    says: str = ""
    """Words the error message must contain."""
    hangs_up: bool = False
    """The fake holds its connection open: the gateway must be the one to close it."""
    max_s: float = 5.0
    formats: tuple[str, ...] = tuple(FORMATS)


STREAM_CASES = [
    Case("badjson", True, 502, says="not JSON"),
    Case("badjson?at=4", True, 200, says="not JSON"),
    Case("notobject", True, 502, says="not a JSON object"),
    Case("notobject?at=4", True, 200, says="not a JSON object"),
    Case("badutf8", True, 502),
    Case("badutf8?at=4", True, 200),
    Case("badname", True, 502, says="not valid UTF-8"),
    Case("badname?at=4", True, 200, says="not valid UTF-8"),
    Case("singlelf", True, 502, says="before its first event"),
    Case("singlelf?at=4", True, 200, says="before the answer finished"),
    Case("oversize", True, 502, says="1048576 bytes", hangs_up=True),
    Case("oversize?at=4", True, 200, says="1048576 bytes", hangs_up=True),
    Case("html", True, 502, says="text/html"),
    Case("hangup", True, 502, says="dropped the connection"),
    Case("hangup?at=4", True, 200, says="dropped the connection"),
    Case("hangup?when=request", True, 502, says="dropped the connection"),
    Case("liechunk?mode=short", True, 502, says="dropped the connection"),
    Case("liechunk?mode=short&at=4", True, 200, says="dropped the connection"),
    Case("liechunk?mode=badhex&together=1", True, 502, says="malformed HTTP", hangs_up=True),
    Case("liechunk?mode=long&together=1", True, 502, says="malformed HTTP", hangs_up=True),
    Case("liechunk?mode=badhex", True, 502, hangs_up=True, formats=("openai",)),
    Case("liechunk?mode=badhex&at=4", True, 200, hangs_up=True),
    Case("hush?stall_s=30", True, 504, ("upstream_timeout",), "first token", True, 7.0),
    Case("hush?at=4&stall_s=30", True, 200, ("idle_timeout",), hangs_up=True),
    Case("bigerror?code=500&kb=4096", True, 502, says="answered 500"),
    Case("bigerror?code=503&kb=4096&shape=text", True, 503, says="answered 503"),
    Case("bigerror?code=400&kb=4096", True, 400, (None,)),
]
COMPLETE_CASES = [
    Case("badjson", False, 502, says="not JSON"),
    Case("notobject", False, 502, says="not a JSON object"),
    Case("badutf8", False, 502, says="not JSON"),
    Case("html", False, 502, says="not JSON"),
    Case("hangup", False, 502, says="dropped the connection"),
    Case("hangup?when=request", False, 502, says="dropped the connection"),
    Case("liechunk?mode=short", False, 502, says="dropped the connection"),
    Case("liechunk?mode=badhex&together=1", False, 502, says="malformed HTTP", hangs_up=True),
    Case("liechunk?mode=badhex", False, 502, hangs_up=True, formats=("openai",)),
    Case("bigerror?code=500&kb=4096", False, 502, says="answered 500"),
    Case("bigerror?code=502&kb=4096&shape=text", False, 502, says="answered 502"),
    Case("bigerror?code=400&kb=4096", False, 400, (None,)),
    Case("hugejson?kb=8192", False, 200),
]
CASES = STREAM_CASES + COMPLETE_CASES
PARAMS = [
    pytest.param(
        case,
        fmt,
        id=f"{fmt}-{'stream' if case.stream else 'complete'}-{case.upstream}",
    )
    for case in CASES
    for fmt in case.formats
]


def model_name(fmt: str, upstream: str) -> str:
    return f"hostile-{fmt}-{upstream}"


@pytest.fixture(scope="module")
def hostile_gateway(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """The shared test config with short timeouts and one model per hostile scenario."""
    config = test_config(
        upstream.url,
        timeouts={
            "connect": 2,
            "first_token": FIRST_TOKEN,
            "idle": IDLE,
            "keepalive": 0.5,
            "total": 4,
        },
    )
    for name in sorted({case.upstream for case in CASES}):
        for fmt, provider in FORMATS.items():
            config["models"].append(
                {"name": model_name(fmt, name), "provider": provider, "upstream_model": name}
            )
    with GatewayProcess(config, tmp_path_factory.mktemp("hostile")) as proc:
        yield proc


@pytest.fixture(scope="module")
def probe(hostile_gateway: GatewayProcess) -> Iterator[Probe]:
    probe = Probe(hostile_gateway)
    yield probe
    probe.close()


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=15) as client:
        yield client


@pytest.fixture
def log_watch(hostile_gateway: GatewayProcess) -> Iterator[LogWatch]:
    watch = LogWatch(hostile_gateway)
    watch.mark()
    yield watch
    watch.assert_clean()


def sse_data(raw: bytes) -> list[bytes]:
    return [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]


def last_seen(upstream: FakeUpstream, scenario: str) -> Seen:
    return next(s for s in reversed(upstream.seen) if s.body.get("model") == scenario)


@pytest.mark.parametrize(("case", "fmt"), PARAMS)
def test_hostile_upstream_gets_an_honest_openai_shaped_error(
    hostile_gateway: GatewayProcess,
    upstream: FakeUpstream,
    probe: Probe,
    client: httpx.Client,
    log_watch: LogWatch,
    case: Case,
    fmt: str,
) -> None:
    model = model_name(fmt, case.upstream)
    body = {
        "model": model,
        "stream": case.stream,
        "messages": [{"role": "user", "content": "hi"}],
    }
    before = probe.metrics()
    requests_before = metric_value(before, "gateway_requests_total", model=model)
    completed_before = metric_value(
        before, "gateway_requests_total", model=model, outcome="completed"
    )
    started = time.monotonic()
    r = client.post(hostile_gateway.url + "/v1/chat/completions", headers=AUTH, json=body)
    elapsed = time.monotonic() - started
    raw = r.content
    assert_nothing_leaked(raw, upstream.url)
    assert r.status_code == case.status, raw[:600]
    assert elapsed < case.max_s, f"took {elapsed:.1f} s"

    if case.status == 200 and case.stream:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_data(raw)
        assert b"[DONE]" not in events, "a broken answer must not end cleanly"
        error = error_of(events[-1])
        chunks = [orjson.loads(e) for e in events[:-1]]
        assert chunks, "the events before the fault were relayed"
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    elif case.status == 200:
        answer = orjson.loads(raw)
        assert answer["object"] == "chat.completion"
        assert len(answer["choices"][0]["message"]["content"]) == 8192 * 1024
        error = None
    else:
        assert r.headers["content-type"] == "application/json"
        error = error_of(raw, relayed=case.status == 400)
        if case.status >= 500:
            assert error["type"] == "api_error"
        assert len(raw) < 2048 or case.status == 400, "a huge upstream error body was relayed"

    if error is not None:
        assert error["code"] in case.codes, error
        assert case.says in error["message"], error
    if case.hangs_up:
        seen = last_seen(upstream, case.upstream)
        assert wait_for(lambda: seen.disconnected), "the gateway left the upstream open"
    # Exactly one outcome, and only an answer that arrived whole counts as completed; no
    # stream left open.
    after = ""

    def settled() -> bool:
        nonlocal after
        after = probe.metrics()
        return (
            metric_value(after, "gateway_requests_total", model=model) == requests_before + 1
            and metric_value(after, "gateway_active_streams") == 0
        )

    assert wait_for(settled), after[-2000:]
    completed = metric_value(after, "gateway_requests_total", model=model, outcome="completed")
    assert completed == completed_before + (1 if error is None else 0)
    assert hostile_gateway.proc is not None and hostile_gateway.proc.poll() is None
    assert client.get(hostile_gateway.url + "/healthz").status_code == 200
