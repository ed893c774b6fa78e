"""The request log: one JSON line per record, off the request path, drained on close."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog

from gateway.config import LoggingConfig
from gateway.observability.metrics import Metrics
from gateway.observability.records import RequestRecord
from gateway.observability.requestlog import (
    BODY_FIELDS,
    LOG_FORMAT_ENV,
    DropSecrets,
    EventDict,
    FanOut,
    RequestLog,
    StreamSink,
    configure_process_logging,
    logs_as_json,
    render_line,
)
from tests.observability.obs_support import make_record, value

HEADER = ("timestamp", "level", "event")


class ListSink:
    """Keeps every line; optionally blocks each write until released."""

    def __init__(self, *, blocked: bool = False) -> None:
        self.lines: list[bytes] = []
        self.writes = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        if not blocked:
            self.release.set()
        self.closed = False

    def write(self, lines: Sequence[bytes]) -> None:
        self.entered.set()
        self.release.wait()
        self.writes += 1
        self.lines.extend(lines)

    def close(self) -> None:
        self.closed = True

    def records(self) -> list[dict[str, object]]:
        return [orjson.loads(line) for line in self.lines]


def dropped(metrics: Metrics) -> float | None:
    return value(metrics.render()[0], "gateway_log_records_dropped_total")


def numbered(n: int, **overrides: object) -> list[RequestRecord]:
    return [make_record("completed", request_id=f"r{i}", **overrides) for i in range(n)]


def test_every_submitted_record_becomes_one_json_line_in_the_file(
    metrics: Metrics, tmp_path: Path
) -> None:
    path = tmp_path / "requests.log"
    path.write_bytes(b'{"earlier": "line"}\n')
    records = numbered(1000, request_body=b'{"messages": []}', response_text="hello")

    async def scenario() -> None:
        log = RequestLog(LoggingConfig(file=str(path), batch_size=64), metrics, log_bodies=False)
        await log.start()
        for rec in records:
            log.submit(rec)
        await log.aclose()

    asyncio.run(scenario())
    lines = path.read_bytes().splitlines()
    assert lines[0] == b'{"earlier": "line"}'  # appended, not truncated
    written = [orjson.loads(line) for line in lines[1:]]
    assert len(written) == len(records)
    for line, rec in zip(written, records, strict=True):
        assert list(line)[:3] == list(HEADER)
        assert line["event"] == "request"
        assert line["level"] == "info"
        assert datetime.fromisoformat(str(line["timestamp"])).utcoffset() is not None
        expected = rec.log_fields()
        del expected["request_body"], expected["response_text"]
        assert {k: v for k, v in line.items() if k not in HEADER} == expected
    assert not dropped(metrics)


class HeadNamedRecord(RequestRecord):
    """Fields named as the line's head (or none at all): the head keeps its place, the
    field's value wins, as when both were one dict."""

    extra: dict[str, object] | None = None

    def log_fields(self) -> dict[str, object]:
        if self.extra is None:
            return {}
        return {**super().log_fields(), **self.extra}


@pytest.mark.parametrize(
    "extra", [None, {"level": "loud"}, {"timestamp": 1}, {"status_text": "ok"}]
)
def test_a_line_whose_fields_name_its_head_is_rendered_as_one_object(
    extra: dict[str, object] | None,
) -> None:
    rec = HeadNamedRecord(request_id="r1", route="chat.completions", status=503)
    rec.extra = extra
    rec.ended_at = 1_765_000_000.25
    line = render_line(rec, DropSecrets(), log_bodies=False)
    assert line == structlog_line(rec, log_bodies=False)
    assert list(orjson.loads(line))[:3] == list(HEADER)


def test_bodies_are_logged_only_with_log_bodies(metrics: Metrics) -> None:
    def run(log_bodies: bool) -> dict[str, object]:
        sink = ListSink()

        async def scenario() -> None:
            log = RequestLog(LoggingConfig(), metrics, log_bodies=log_bodies, sink=sink)
            await log.start()
            log.submit(make_record(request_body=b'{"prompt": "hi"}', response_text="hello"))
            await log.aclose()

        asyncio.run(scenario())
        (line,) = sink.records()
        return line

    with_bodies = run(log_bodies=True)
    assert with_bodies["request_body"] == '{"prompt": "hi"}'
    assert with_bodies["response_text"] == "hello"
    without = run(log_bodies=False)
    assert "request_body" not in without
    assert "response_text" not in without


class LeakyRecord(RequestRecord):
    def log_fields(self) -> dict[str, object]:
        return {
            **super().log_fields(),
            "Authorization": "Bearer sk-leak-1",
            "x-api-key": "sk-leak-2",
            "upstream_api_key": "sk-leak-3",
        }


def test_fields_named_like_credentials_never_reach_the_log(metrics: Metrics) -> None:
    sink = ListSink()

    async def scenario() -> None:
        log = RequestLog(LoggingConfig(), metrics, log_bodies=True, sink=sink)
        await log.start()
        log.submit(LeakyRecord(request_id="r1", route="chat.completions", key_id="team-a"))
        await log.aclose()

    asyncio.run(scenario())
    assert b"sk-leak" not in b"".join(sink.lines)
    assert sink.records()[0]["key_id"] == "team-a"

    event = {k: "x" for k in ("authorization", "API_KEY", "X-Api-Key", "provider_secret")}
    event |= {"key_id": "team-a", "prompt_tokens": "3", "completion_tokens": "4"}
    assert DropSecrets()(None, "info", event) == {
        "key_id": "team-a",
        "prompt_tokens": "3",
        "completion_tokens": "4",
    }


def test_server_errors_are_logged_at_error_level(metrics: Metrics) -> None:
    sink = ListSink()

    async def scenario() -> None:
        log = RequestLog(LoggingConfig(), metrics, log_bodies=False, sink=sink)
        await log.start()
        log.submit(make_record("upstream_error"))
        log.submit(make_record("rate_limited"))
        await log.aclose()

    asyncio.run(scenario())
    assert [line["level"] for line in sink.records()] == ["error", "info"]


def test_a_blocked_sink_never_blocks_submit_and_the_overflow_is_counted(
    metrics: Metrics,
) -> None:
    sink = ListSink(blocked=True)
    config = LoggingConfig(queue_size=1000, batch_size=100)
    first_batch = numbered(config.batch_size)
    flood = numbered(20_000)

    async def scenario() -> None:
        log = RequestLog(config, metrics, log_bodies=False, sink=sink)
        await log.start()
        for rec in first_batch:
            log.submit(rec)
        # The consumer takes the first batch and hangs in the sink's write.
        assert await asyncio.to_thread(sink.entered.wait, 10)

        for rec in flood:
            log.submit(rec)
        # All 20k calls returned while the sink stayed stuck: submit waited for nothing.
        assert sink.writes == 0
        assert log.depth == config.queue_size
        assert dropped(metrics) == len(flood) - config.queue_size
        body, _ = metrics.render()
        assert value(body, "gateway_log_queue_depth") == config.queue_size

        sink.release.set()
        await log.aclose()

    try:
        asyncio.run(scenario())
    finally:
        sink.release.set()
    written = [line["request_id"] for line in sink.records()]
    expected = [r.request_id for r in first_batch + flood[: config.queue_size]]
    assert written == expected
    assert sink.closed
    assert value(metrics.render()[0], "gateway_log_queue_depth") == 0


def test_aclose_drains_everything_queued_through_a_slow_sink(metrics: Metrics) -> None:
    class SlowSink(ListSink):
        def write(self, lines: Sequence[bytes]) -> None:
            threading.Event().wait(0.005)
            super().write(lines)

    sink = SlowSink()
    records = numbered(2000)

    async def scenario() -> None:
        log = RequestLog(LoggingConfig(batch_size=50), metrics, log_bodies=False, sink=sink)
        await log.start()
        for rec in records:
            log.submit(rec)
        await asyncio.sleep(0)
        await log.aclose()
        log.submit(make_record())  # after close: dropped, counted

    asyncio.run(scenario())
    assert len(sink.lines) == len(records)
    assert sink.writes >= len(records) // 50
    assert sink.closed
    assert dropped(metrics) == 1


def test_aclose_gives_up_on_a_stuck_sink_after_its_timeout(metrics: Metrics) -> None:
    sink = ListSink(blocked=True)
    config = LoggingConfig(batch_size=10)

    async def scenario() -> None:
        log = RequestLog(config, metrics, log_bodies=False, sink=sink)
        await log.start()
        for rec in numbered(35):
            log.submit(rec)
        assert await asyncio.to_thread(sink.entered.wait, 10)
        await log.aclose(timeout=0.2)
        # What never left the queue is counted; the batch stuck in the sink is not lost yet.
        assert dropped(metrics) == 25
        sink.release.set()

    try:
        asyncio.run(scenario())
    finally:
        sink.release.set()
    assert len(sink.lines) == 10


def test_a_failing_sink_loses_one_batch_and_the_log_carries_on(
    metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    class FlakySink(ListSink):
        failed: threading.Event

        def write(self, lines: Sequence[bytes]) -> None:
            if not self.failed.is_set():
                self.failed.set()
                raise OSError(28, "No space left on device")
            super().write(lines)

    sink = FlakySink()
    sink.failed = threading.Event()

    async def scenario() -> None:
        log = RequestLog(LoggingConfig(batch_size=5), metrics, log_bodies=False, sink=sink)
        await log.start()
        for rec in numbered(5):
            log.submit(rec)
        assert await asyncio.to_thread(sink.failed.wait, 10)
        for rec in numbered(3):
            log.submit(rec)
        await log.aclose()

    with caplog.at_level(logging.WARNING, logger="gateway.requestlog"):
        asyncio.run(scenario())
    assert len(sink.lines) == 3
    assert dropped(metrics) == 5
    assert "No space left" in caplog.text


def test_records_submitted_before_start_are_written_once_started(metrics: Metrics) -> None:
    sink = ListSink()

    async def scenario() -> None:
        log = RequestLog(LoggingConfig(), metrics, log_bodies=False, sink=sink)
        log.submit(make_record())
        await log.start()
        await log.aclose()

    asyncio.run(scenario())
    assert len(sink.lines) == 1


def test_the_writer_task_waits_for_lines_and_ends_when_closed_with_none_waiting(
    metrics: Metrics,
) -> None:
    """Lines in batches of at most `batch_size` as they come (the task woken by the first
    of each), and a close while the task waits for lines ends it at once."""
    sink = ListSink()

    async def scenario() -> None:
        log = RequestLog(LoggingConfig(batch_size=3), metrics, log_bodies=False, sink=sink)
        await log.start()
        for burst in (numbered(1), numbered(7)):
            for rec in burst:
                log.submit(rec)
            written = len(sink.lines) + len(burst)
            for _ in range(200):
                await asyncio.sleep(0.01)
                if len(sink.lines) == written:
                    break
            assert log.depth == 0
        await asyncio.sleep(0)  # the task waits for lines again
        started = time.perf_counter()
        await log.aclose()
        assert time.perf_counter() - started < 0.04  # less than a linger

    asyncio.run(scenario())
    assert len(sink.lines) == 8
    assert sink.writes == 1 + 3  # 1, then 3 + 3 + 1
    assert not dropped(metrics)


def test_stdout_is_the_default_sink(
    metrics: Metrics, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    async def scenario() -> None:
        log = RequestLog(LoggingConfig(), metrics, log_bodies=False)
        await log.start()
        log.submit(make_record(request_id="to-stdout"))
        await log.aclose()

    asyncio.run(scenario())
    (line,) = capsysbinary.readouterr().out.splitlines()
    assert orjson.loads(line)["request_id"] == "to-stdout"


def test_stream_sink_writes_whole_lines_in_pipe_atomic_chunks() -> None:
    class Recorder(io.BytesIO):
        chunks: list[bytes]

        def write(self, data: object) -> int:
            assert isinstance(data, bytes)
            self.chunks.append(data)
            return super().write(data)

    stream = Recorder()
    stream.chunks = []
    lines = [(b"%d" % i) * 300 + b"\n" for i in range(1, 40)]
    StreamSink(stream, close_stream=False).write(lines)

    assert stream.getvalue() == b"".join(lines)
    assert len(stream.chunks) > 1
    assert all(len(c) <= 4096 and c.endswith(b"\n") for c in stream.chunks)


def test_structlog_global_configuration_is_left_alone(metrics: Metrics) -> None:
    before = (structlog.is_configured(), structlog.get_config())

    async def scenario() -> None:
        log = RequestLog(LoggingConfig(), metrics, log_bodies=False, sink=ListSink())
        await log.start()
        log.submit(make_record())
        await log.aclose()

    asyncio.run(scenario())
    assert (structlog.is_configured(), structlog.get_config()) == before


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, and structlog's and `warnings`' configuration, put back after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configured, config = structlog.is_configured(), structlog.get_config()
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)
    structlog.reset_defaults()
    if configured:
        structlog.configure(**config)


def test_process_logging_writes_the_gateways_own_logs_as_json(
    root_logger: logging.Logger,
) -> None:
    out = io.StringIO()
    configure_process_logging(level="info", json=True, stream=out)
    logging.getLogger("gateway.server").warning("listening on %s", "127.0.0.1:8080")

    line = orjson.loads(out.getvalue())
    assert line["event"] == "listening on 127.0.0.1:8080"
    assert line["level"] == "warning"
    assert line["logger"] == "gateway.server"
    assert "timestamp" in line


def test_process_logging_sends_structlog_stdlib_and_warnings_down_one_pipeline(
    root_logger: logging.Logger,
) -> None:
    out = io.StringIO()
    configure_process_logging(json=True, stream=out)
    structlog.get_logger("gateway").error("unhandled error", route="chat.completions")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("gateway.finished").exception("bookkeeping failed")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("deprecated thing", DeprecationWarning, stacklevel=1)

    first, second, third = (orjson.loads(line) for line in out.getvalue().splitlines())
    assert first["event"] == "unhandled error"
    assert (first["level"], first["logger"], first["route"]) == (
        "error",
        "gateway",
        "chat.completions",
    )
    assert second["logger"] == "gateway.finished"
    assert "ValueError: boom" in second["exception"]
    assert third["logger"] == "py.warnings"
    assert "deprecated thing" in third["event"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_process_logs_are_json_unless_a_terminal_watches_or_the_env_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(LOG_FORMAT_ENV, raising=False)
    assert logs_as_json(io.StringIO())
    assert not logs_as_json(_Terminal())
    monkeypatch.setenv(LOG_FORMAT_ENV, "json")
    assert logs_as_json(_Terminal())
    monkeypatch.setenv(LOG_FORMAT_ENV, "console")
    assert not logs_as_json(io.StringIO())


def test_the_timestamp_is_when_the_request_ended_not_when_it_was_logged(
    metrics: Metrics,
) -> None:
    sink = ListSink()
    ended = 1_700_000_000.25  # 2023-11-14T22:13:20.250Z

    async def scenario() -> None:
        log = RequestLog(LoggingConfig(), metrics, log_bodies=False, sink=sink)
        await log.start()
        rec = make_record()
        rec.ended_at = ended
        log.submit(rec)
        await log.aclose()

    asyncio.run(scenario())
    assert sink.records()[0]["timestamp"] == "2023-11-14T22:13:20.250Z"


def test_a_fan_out_writes_every_sink_even_when_one_fails() -> None:
    class Broken:
        def write(self, lines: Sequence[bytes]) -> None:
            raise OSError("disk full")

        def close(self) -> None:
            raise OSError("disk full")

    kept = ListSink()
    fan = FanOut(Broken(), kept)
    with pytest.raises(OSError, match="disk full"):
        fan.write([b"one\n"])  # the failure is still reported (and counted by the log)
    assert kept.lines == [b"one\n"]
    fan.close()
    assert kept.closed


def structlog_line(rec: RequestRecord, *, log_bodies: bool) -> bytes:
    """The line as the structlog chain the request log used before rendered it (kept here
    as the reference `render_line` must match byte for byte)."""

    def drop_bodies(_logger: object, _method: str, event: EventDict) -> EventDict:
        for name in BODY_FIELDS:
            event.pop(name, None)
        return event

    def add_header(_logger: object, method: str, event: EventDict) -> EventDict:
        stamp = datetime.fromtimestamp(event.pop("_ended_at"), UTC)
        return {
            "timestamp": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": method,
            "event": event.pop("event", None),
            **event,
        }

    lines: list[bytes] = []

    class Collector:
        def _keep(self, line: bytes) -> None:
            lines.append(line + b"\n")

        info = error = _keep

    processors: list[Any] = [DropSecrets()]
    if not log_bodies:
        processors.append(drop_bodies)
    processors += [add_header, structlog.processors.JSONRenderer(serializer=orjson.dumps)]
    logger: Any = structlog.make_filtering_bound_logger(logging.INFO)(
        Collector(), processors=processors, context={}
    )
    method = logger.error if rec.status >= 500 else logger.info
    method("request", _ended_at=rec.ended_at, **rec.log_fields())
    (line,) = lines
    return line


@pytest.mark.parametrize("log_bodies", [False, True])
def test_the_line_is_byte_for_byte_what_the_structlog_chain_rendered(log_bodies: bool) -> None:
    ended = 1_765_000_000.0
    records = [
        make_record("completed"),
        make_record("upstream_error", error='upstream said "no" \u00e9', attempts=3),
        make_record("client_cancelled", ttft_s=None, usage_reported=False),
        make_record(cached_tokens=5, cache_write_tokens=2, reasoning_tokens=1, cost_nanos=1234),
        make_record(request_body=b'{"prompt": "hi \xff"}', response_text="hello\n"),
        make_record(model="m" * 200, deployment="east", duration_s=1 / 3, overhead_s=2e-7),
        LeakyRecord(request_id="r1", route="chat.completions", key_id="team-a"),
    ]
    drop = DropSecrets()
    for i, rec in enumerate(records):
        for ended_at in (ended + i + 0.0004, ended + i + 0.9996, ended + i + 0.123456):
            rec.ended_at = ended_at
            expected = structlog_line(rec, log_bodies=log_bodies)
            # Twice: the second time through the secret filter's memo of harmless names.
            assert render_line(rec, drop, log_bodies=log_bodies) == expected
            assert render_line(rec, drop, log_bodies=log_bodies) == expected
