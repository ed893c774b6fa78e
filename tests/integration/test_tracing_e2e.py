"""Traces through the real `gateway serve`: the spans a real OTLP/HTTP receiver gets, the
`traceparent` the fake upstream sees, sampling, a collector that hangs, and tracing off."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import openai

from tests.integration.test_stream_semantics import metric
from tests.support.fake_upstream import FakeUpstream, Seen
from tests.support.gateway_proc import KEY_A, GatewayProcess, test_config
from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan, SilentPort

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


def traced_config(upstream: FakeUpstream, endpoint: str, **tracing: Any) -> dict[str, Any]:
    return test_config(upstream.url, tracing={"otlp_endpoint": endpoint, **tracing})


def sdk(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY_A, max_retries=0)


def chat_stream(
    gw: GatewayProcess,
    model: str,
    traceparent: str | None = None,
    client: openai.OpenAI | None = None,
) -> dict[str, Any]:
    """One streamed chat through the OpenAI SDK (`client`, else a new one): its text, usage
    and finish reason."""
    client = client or sdk(gw)
    headers = {"traceparent": traceparent} if traceparent else {}
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=headers,
    )
    out: dict[str, Any] = {"text": "", "finish": None, "usage": None}
    for chunk in stream:
        for choice in chunk.choices:
            out["text"] += choice.delta.content or ""
            out["finish"] = choice.finish_reason or out["finish"]
        if chunk.usage is not None:
            out["usage"] = chunk.usage
    return out


NOT_LOADED_WHEN_OFF = (
    "gateway.observability.tracing",
    "opentelemetry.sdk.trace",
    "opentelemetry.exporter",
)


def imported_modules(gw: GatewayProcess) -> set[str]:
    """The modules the server process imported (`PYTHONPROFILEIMPORTTIME` on its stderr)."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in gw.output().splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }


def seen_for(upstream: FakeUpstream, since: int) -> list[Seen]:
    return upstream.seen[since:]


def one_request_span(spans: list[ReceivedSpan]) -> tuple[ReceivedSpan, list[ReceivedSpan]]:
    servers = [s for s in spans if s.kind == "SERVER"]
    assert len(servers) == 1, spans
    children = sorted((s for s in spans if s.kind == "CLIENT"), key=lambda s: s.start_ns)
    return servers[0], children


def test_a_stream_leaves_a_request_span_and_an_attempt_span_with_genai_attributes(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    with OtlpReceiver() as receiver:
        since = len(upstream.seen)
        env = {"PYTHONPROFILEIMPORTTIME": "1"}  # the server's imports, on its stderr
        gw = GatewayProcess(traced_config(upstream, receiver.url), tmp_path, env=env)
        with gw:
            answer = chat_stream(gw, "gpt-test")
        # Stopping the gateway exported what was queued.
        (sent,) = seen_for(upstream, since)
        header = sent.headers["traceparent"]
        match = re.fullmatch(r"00-([0-9a-f]{32})-([0-9a-f]{16})-01", header)
        assert match, header
        spans = receiver.trace(match[1])
    request, attempts = one_request_span(spans)
    (attempt,) = attempts
    assert request.parent_span_id == ""  # no traceparent came in: a new trace
    assert attempt.parent_span_id == request.span_id
    assert attempt.span_id == match[2]  # the upstream's parent is the attempt's span
    assert request.name == "chat gpt-test"
    assert request.resource["service.name"] == "llm-gateway"
    a = request.attributes
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "gpt-test"
    assert a["gen_ai.response.model"] == "text?n=12"
    assert a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.usage.input_tokens"] == answer["usage"].prompt_tokens
    assert a["gen_ai.usage.output_tokens"] == answer["usage"].completion_tokens > 0
    assert a["gen_ai.response.finish_reasons"] == [answer["finish"]] == ["stop"]
    assert a["gateway.key_id"] == "team-a"
    assert a["gateway.outcome"] == "completed"
    assert a["gateway.attempts"] == 1
    assert 0 < a["gateway.ttft_ms"] < 10_000
    assert "sk-" not in repr(spans)  # no key, the client's or the upstream's
    assert request.start_ns <= attempt.start_ns <= attempt.end_ns <= request.end_ns
    # The attempt that answered lasts as long as its stream: to the request's end.
    assert attempt.end_ns == request.end_ns
    first_event_ms = attempt.attributes["gateway.first_event_ms"]
    assert 0 < first_event_ms <= (attempt.end_ns - attempt.start_ns) / 1e6
    assert attempt.attributes["gen_ai.request.model"] == "text?n=12"
    assert attempt.attributes["gateway.provider"] == "fake"
    # The deployment the router chose (a plain model is one, named PROVIDER/UPSTREAM_MODEL).
    assert attempt.attributes["gateway.deployment"] == "fake/text?n=12"
    assert a["gateway.deployment"] == "fake/text?n=12"
    assert "error.type" not in attempt.attributes
    # The SDK loaded in the server only because tracing is on (the control of the off test).
    assert {"gateway.observability.tracing", "opentelemetry.sdk.trace"} <= imported_modules(gw)


def test_retries_and_a_fallback_are_attempt_spans_and_the_client_traceparent_is_continued(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    client_parent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    with OtlpReceiver() as receiver:
        since = len(upstream.seen)
        with GatewayProcess(traced_config(upstream, receiver.url), tmp_path) as gw:
            answer = chat_stream(gw, "gpt-fallback", traceparent=client_parent)
        sent = seen_for(upstream, since)
        spans = receiver.trace(CLIENT_TRACE)
    assert answer["text"]
    request, attempts = one_request_span(spans)
    assert request.parent_span_id == CLIENT_SPAN
    assert request.attributes["gateway.attempts"] == 3
    assert request.attributes["gen_ai.request.model"] == "gpt-fallback"
    assert request.attributes["gen_ai.provider.name"] == "anthropic"
    assert request.attributes["gen_ai.response.model"] == "text?n=12"
    assert request.attributes["gen_ai.response.finish_reasons"] == ["stop"]  # Anthropic's end_turn
    # fake's 503, its retry's 503, then the fallback (claude-test on fake-anthropic)
    assert [s.attributes.get("error.type") for s in attempts] == ["http_5xx", "http_5xx", None]
    assert [s.attributes["gateway.provider"] for s in attempts] == [
        "fake",
        "fake",
        "fake-anthropic",
    ]
    assert [s.status for s in attempts] == [2, 2, 0]
    assert [s.attributes["gateway.deployment"] for s in attempts] == [
        f"{s.attributes['gateway.provider']}/{s.attributes['gen_ai.request.model']}"
        for s in attempts
    ]
    assert all(s.parent_span_id == request.span_id for s in attempts)
    # Each upstream request named its own attempt's span, in the client's trace.
    assert [s.headers["traceparent"] for s in sent] == [
        f"00-{CLIENT_TRACE}-{s.span_id}-01" for s in attempts
    ]
    assert attempts[0].end_ns <= attempts[1].start_ns <= attempts[1].end_ns <= attempts[2].start_ns


def test_sample_ratio_zero_records_only_traces_the_client_sampled(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    sampled = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    unsampled = f"00-{'1' * 32}-{CLIENT_SPAN}-00"
    with OtlpReceiver() as receiver:
        since = len(upstream.seen)
        config = traced_config(upstream, receiver.url, sample_ratio=0.0)
        with GatewayProcess(config, tmp_path) as gw:
            for _ in range(5):
                chat_stream(gw, "gpt-test")
            chat_stream(gw, "gpt-test", traceparent=unsampled)
            chat_stream(gw, "gpt-test", traceparent=sampled)
        sent = seen_for(upstream, since)
        spans = list(receiver.spans)
    assert {s.trace_id for s in spans} == {CLIENT_TRACE}
    assert len(spans) == 2  # the sampled request's span and its attempt's
    assert [("traceparent" in s.headers) for s in sent] == [False] * 6 + [True]


def test_a_collector_that_hangs_costs_streams_nothing_and_its_spans_count_as_dropped(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    with OtlpReceiver(hang=True) as receiver:
        config = traced_config(upstream, receiver.url, export_timeout=3.0, max_queue_size=8)
        with GatewayProcess(config, tmp_path) as gw:
            # One client for all 30: a new SDK client per stream (its TLS context, ~50 ms of
            # CPU) made the client's own cost, not the gateway's, most of what was timed
            # on a busy box.
            client = sdk(gw)
            started = time.perf_counter()
            slowest = 0.0
            for _ in range(30):
                t0 = time.perf_counter()
                answer = chat_stream(gw, "gpt-test", client=client)
                slowest = max(slowest, time.perf_counter() - t0)
                assert answer["finish"] == "stop"
            elapsed = time.perf_counter() - started
            # 60 spans into a queue of 8 whose export hangs: at least 52 dropped at once.
            dropped = metric(gw, "gateway_trace_spans_dropped_total")
            assert dropped >= 52
    # No stream waited for an export (one would take the 3 s export timeout); a wide margin.
    assert slowest < 1.5, slowest
    assert elapsed < 20, elapsed
    assert receiver.requests == 0


def test_tracing_off_loads_no_sdk_and_connects_nowhere(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    port = SilentPort()
    try:
        # Even the standard OTel variables pointing at a listener change nothing.
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port.port}",
            "OTEL_TRACES_EXPORTER": "otlp",
            "PYTHONPROFILEIMPORTTIME": "1",
        }
        since = len(upstream.seen)
        with GatewayProcess(test_config(upstream.url), tmp_path, env=env) as gw:
            for _ in range(3):
                assert chat_stream(gw, "gpt-test")["finish"] == "stop"
        assert port.connections() == 0
        # -X importtime lists every module the server imported, lazily loaded ones too.
        imports = imported_modules(gw)
        assert "gateway.relay.stream" in imports  # the list is there...
        # ...and holds neither the tracing pipeline nor the SDK's tracing and exporters.
        # (redis-py imports `opentelemetry.sdk.metrics` itself when the SDK is installed:
        # its own optional metrics, which it leaves off unless asked; not ours to stop.)
        loaded = {m for m in imports if m.startswith(NOT_LOADED_WHEN_OFF)}
        assert loaded == set()
        assert all("traceparent" not in s.headers for s in seen_for(upstream, since))
    finally:
        port.close()


def test_each_worker_exports_its_own_requests_spans(upstream: FakeUpstream, tmp_path: Path) -> None:
    with OtlpReceiver() as receiver:
        config = traced_config(upstream, receiver.url)
        with GatewayProcess(config, tmp_path, workers=2) as gw:
            for _ in range(8):
                chat_stream(gw, "gpt-test")
        servers = [s for s in receiver.spans if s.kind == "SERVER"]
        # Every request's spans arrived, whichever worker served it; ids never collided.
        assert len(servers) == 8
        assert len({s.trace_id for s in servers}) == 8
        assert len({s.span_id for s in receiver.spans}) == len(receiver.spans) == 16
        # Each worker names itself (its pid) in the resource of its spans.
        assert all(isinstance(s.resource.get("process.pid"), int) for s in servers)


def test_a_collector_that_refuses_connections_costs_a_counted_drop(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    port = SilentPort()
    endpoint = f"http://127.0.0.1:{port.port}"
    port.close()  # nothing listens there now: every export is refused
    config = traced_config(upstream, endpoint, export_timeout=0.5)
    with GatewayProcess(config, tmp_path) as gw:
        for _ in range(3):
            assert chat_stream(gw, "gpt-test")["finish"] == "stop"
        # The batch is exported within a second, fails, and its 6 spans are counted.
        assert upstream.wait_for(
            lambda: metric(gw, "gateway_trace_spans_dropped_total") == 6, timeout=10
        )


def test_a_plain_call_and_a_failed_request_are_traced_too(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    with OtlpReceiver() as receiver:
        with GatewayProcess(traced_config(upstream, receiver.url), tmp_path) as gw:
            client = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY_A, max_retries=0)
            answer = client.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": "hi"}]
            )
            try:
                client.chat.completions.create(
                    model="gpt-500", messages=[{"role": "user", "content": "hi"}]
                )
            except openai.APIStatusError as exc:
                assert exc.status_code == 502
            else:
                raise AssertionError("gpt-500 answered")
        servers = {
            s.attributes["gen_ai.request.model"]: s for s in receiver.spans if s.kind == "SERVER"
        }
        children = [s for s in receiver.spans if s.kind == "CLIENT"]
    plain, failed = servers["gpt-test"], servers["gpt-500"]
    assert plain.attributes["gateway.stream"] is False
    assert answer.usage is not None
    assert plain.attributes["gen_ai.usage.output_tokens"] == answer.usage.completion_tokens
    assert plain.status == 0
    assert failed.status == 2  # ERROR
    assert failed.attributes["gateway.outcome"] == "upstream_error"
    assert failed.attributes["http.response.status_code"] == 502
    assert "gen_ai.response.model" not in failed.attributes  # no attempt answered
    failed_attempts = [c for c in children if c.parent_span_id == failed.span_id]
    assert [c.attributes["error.type"] for c in failed_attempts] == ["http_5xx", "http_5xx"]
