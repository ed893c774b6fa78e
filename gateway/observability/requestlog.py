"""The request log: one JSON line per request, written off the request path.

Finished requests reach `RequestLog.submit(record)` off the request path, a slice at a
time (`gateway.observability.finished`). It renders the line (timestamp, level,
event="request", then `RequestRecord.log_fields()`) with one `orjson.dumps`, puts it on a
bounded queue and returns; it never awaits and never blocks. Rendering
here, in the event loop's slices, rather than in the writer thread keeps a thread that
would hold the GIL for a whole batch off the loop. One background task takes up to
`logging.batch_size` lines at a time and writes them to the sink in a worker thread. A sink
that blocks (a full pipe, a slow disk) therefore stalls only that task: lines pile up in the
queue, and once it is full new records are dropped and counted in
gateway_log_records_dropped_total. `aclose()` (lifespan shutdown, SIGTERM) drains what is
queued, then flushes and closes the sink.

Secrets: records carry none by construction; a processor still drops any field named like
a credential. Prompts and completions are written only with `log_bodies: true`.

The process's own logs (start-up, draining, upstream errors, tracebacks, uvicorn's and
Python's warnings) are another pipeline, set up by `configure_process_logging`: stderr, so
that stdout carries request-log lines only.

The request log's line used to go through a structlog logger of its own (a processor
chain, then structlog's JSON renderer); it is rendered directly now (`render_line`), to
the same bytes (a test keeps the two side by side), because that chain of calls cost
about as much as everything else the log does per request.

Deliberately not here: log shipping, rotation (use logrotate with copytruncate, or stdout
and the container runtime). Importing this module configures nothing: only
`configure_process_logging` (called once per process by `gateway serve` and by each of its
workers) touches structlog's and the stdlib's global configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import select
import sys
import time
from collections import deque
from collections.abc import MutableMapping, Sequence
from datetime import UTC, datetime
from typing import IO, Any, Protocol, TextIO

import orjson
import structlog

from gateway.config import LoggingConfig
from gateway.observability.metrics import Metrics
from gateway.observability.records import RequestRecord

_log = logging.getLogger("gateway.requestlog")

BODY_FIELDS = ("request_body", "response_text")

_SECRET_NAMES = frozenset(
    {
        "authorization",
        "proxy_authorization",
        "api_key",
        "apikey",
        "x_api_key",
        "api_secret",
        "secret",
        "password",
        "cookie",
        "set_cookie",
        "token",
        "access_token",
        "bearer",
    }
)

# One write() of at most PIPE_BUF bytes to a pipe is atomic, so lines from several workers
# sharing one stdout never interleave mid-line (a longer single line still may).
_ATOMIC_WRITE = getattr(select, "PIPE_BUF", 4096)


class Sink(Protocol):
    """Where rendered lines go. Both methods run in a worker thread and may block."""

    def write(self, lines: Sequence[bytes]) -> None:
        """Write the lines (each ends with a newline) and flush them."""

    def close(self) -> None:
        """Flush and release the sink."""


class StreamSink:
    """Lines to a binary stream, flushed per batch, written in pipe-atomic chunks."""

    def __init__(self, stream: IO[bytes], *, close_stream: bool) -> None:
        self._stream = stream
        self._close_stream = close_stream

    def write(self, lines: Sequence[bytes]) -> None:
        stream = self._stream
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            if chunk and size + len(line) > _ATOMIC_WRITE:
                stream.write(b"".join(chunk))
                stream.flush()
                chunk.clear()
                size = 0
            chunk.append(line)
            size += len(line)
        if chunk:
            stream.write(b"".join(chunk))
            stream.flush()

    def close(self) -> None:
        if self._close_stream:
            self._stream.close()
        else:
            self._stream.flush()


class FanOut:
    """Several sinks as one (`logging.sinks: [stdout, file]`); one failing costs the others
    nothing."""

    def __init__(self, *sinks: Sink) -> None:
        self._sinks = sinks

    def write(self, lines: Sequence[bytes]) -> None:
        failed: OSError | ValueError | None = None
        for sink in self._sinks:
            try:
                sink.write(lines)
            except (OSError, ValueError) as exc:
                failed = exc
        if failed is not None:
            raise failed

    def close(self) -> None:
        for sink in self._sinks:
            with contextlib.suppress(OSError):
                sink.close()


def stdout_sink() -> StreamSink:
    """The process's stdout (left open on close)."""
    return StreamSink(sys.stdout.buffer, close_stream=False)


def file_sink(path: str) -> StreamSink:
    """An append-mode file: O_APPEND keeps several workers' lines whole."""
    return StreamSink(open(path, "ab"), close_stream=True)


# --- the line -------------------------------------------------------------------------------

EventDict = MutableMapping[str, Any]


class DropSecrets:
    """Defence in depth: no field named like a credential reaches the log.

    The verdict per field name is remembered (the names repeat on every line), and so is
    the set of names found harmless, so a line whose names were all seen before costs one
    set check. Both memos stop growing at a bound so odd names cannot grow them without
    limit. Called like a structlog processor (`drop(None, method, fields)`).
    """

    _MEMO_LIMIT = 1024

    def __init__(self) -> None:
        self._secret: dict[str, bool] = {}
        self._harmless: set[str] = set()

    def __call__(self, _logger: object, _method: str, event_dict: EventDict) -> EventDict:
        if self._harmless.issuperset(event_dict):
            return event_dict  # the usual line: every name already known to be harmless
        memo = self._secret
        doomed: list[str] | None = None
        for name in event_dict:
            secret = memo.get(name)
            if secret is None:
                secret = is_secret_name(name)
                if len(memo) < self._MEMO_LIMIT:
                    memo[name] = secret
            if secret:
                doomed = [name] if doomed is None else [*doomed, name]
            elif len(self._harmless) < self._MEMO_LIMIT:
                self._harmless.add(name)
        for name in doomed or ():
            del event_dict[name]
        return event_dict


def is_secret_name(name: str) -> bool:
    normalized = name.lower().replace("-", "_")
    return (
        normalized in _SECRET_NAMES
        or "authorization" in normalized
        or "api_key" in normalized
        or normalized.endswith("_secret")
    )


_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))


class _Timestamps:
    """When a request ended, ISO 8601 UTC to the millisecond (`...T12:34:56.789Z`): what
    `datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")` writes, with Z for
    +00:00, without building and formatting a datetime per line (3 µs, a third of the
    line's rendering). The date and time of day are made once per second, and the
    fraction is rounded as `fromtimestamp` rounds it: to the microsecond, half to even,
    carrying into the second (tests/observability/test_log_numbers.py compares the two)."""

    def __init__(self) -> None:
        self._memo: tuple[int, str] | None = None
        """(second, its "YYYY-MM-DDTHH:MM:SS"): one tuple, replaced whole."""

    def __call__(self, ended_at: float) -> str:
        fraction, whole = math.modf(ended_at)
        micros = round(fraction * 1e6)
        second = int(whole)
        if micros >= 1_000_000:
            second, micros = second + 1, micros - 1_000_000
        elif micros < 0:
            second, micros = second - 1, micros + 1_000_000
        memo = self._memo
        if memo is None or memo[0] != second:
            memo = self._memo = (second, datetime.fromtimestamp(second, UTC).isoformat()[:19])
        return memo[1] + _MILLIS[micros // 1000]


_timestamp = _Timestamps()


def _unencodable(obj: object) -> object:
    """What structlog's JSON renderer wrote for a value JSON has no type for (the line
    used to be rendered by it; `RequestRecord.log_fields` gives none such today)."""
    try:
        return obj.__structlog__()  # type: ignore[attr-defined]
    except AttributeError:
        return repr(obj)


def render_line(rec: RequestRecord, drop_secrets: DropSecrets, *, log_bodies: bool) -> bytes:
    """The record's JSON line (with its newline): timestamp, level and event first, where a
    person reading the raw file expects them, then the record's fields, without bodies
    unless `log_bodies`, without any field named like a credential. Raises TypeError when a
    field cannot be encoded."""
    fields = rec.log_fields()
    if not log_bodies:
        for name in BODY_FIELDS:
            fields.pop(name, None)
    kept = drop_secrets(None, "", fields)
    timestamp = _timestamp(rec.ended_at or time.time())
    level = "error" if rec.status >= 500 else "info"
    if kept and "timestamp" not in kept and "level" not in kept and "event" not in kept:
        # The fields rendered as they are, the head's three written before them: the bytes
        # of one object of all of them (the timestamp's characters need no escaping),
        # without copying every field into a second dict (a sixth of the line's cost).
        rest = orjson.dumps(kept, default=_unencodable, option=orjson.OPT_APPEND_NEWLINE)
        return b"".join((b'{"timestamp":"', timestamp.encode(), _HEADS[level], rest[1:]))
    line = {"timestamp": timestamp, "level": level, "event": "request", **kept}
    return orjson.dumps(line, default=_unencodable, option=orjson.OPT_APPEND_NEWLINE)


_HEADS = {
    level: b'","level":"%s","event":"request",' % level.encode() for level in ("info", "error")
}
"""What follows the timestamp's value in a line, by level, up to the record's first field."""


# --- the log ----------------------------------------------------------------------------------

_LINGER_S = 0.05


class LedgerSink(Protocol):
    """The `database` sink (`gateway.observability.ledger.Ledger`): takes each written batch
    on the event loop, never waits, writes in its own task."""

    def add(self, lines: list[bytes]) -> None: ...


class RequestLog:
    """A bounded queue of finished requests and the one task that writes them out."""

    def __init__(
        self,
        config: LoggingConfig,
        metrics: Metrics,
        *,
        log_bodies: bool,
        sink: Sink | None = None,
        ledger: LedgerSink | None = None,
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._batch_size = max(1, config.batch_size)
        self._queue_size = max(1, config.queue_size)
        self._lines: deque[bytes] = deque()
        """Rendered lines waiting for the writer task, at most `queue_size`: a deque and a
        future to wake the task, not an `asyncio.Queue`, whose bookkeeping (a full() check
        in each put, an unfinished-task count and its event, the getters' and putters'
        wake-ups) for one producer and one consumer cost 0.4 µs a line, as much as the
        rest of a submit."""
        self._wakeup: asyncio.Future[None] | None = None
        """What the writer task awaits while no line waits."""
        self._sink = sink
        self._ledger = ledger
        """`logging.sinks` names `database`: every batch goes to it too."""
        self._log_bodies = log_bodies
        self._drop_secrets = DropSecrets()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def depth(self) -> int:
        return len(self._lines)

    async def start(self) -> None:
        if self._task is not None:
            return
        if self._sink is None:
            sinks = self._config.sinks
            if (sinks and "file" in sinks) or (not sinks and self._config.file):
                self._sink = await asyncio.to_thread(file_sink, self._config.file)
                if "stdout" in sinks:
                    self._sink = FanOut(self._sink, stdout_sink())
            elif not sinks or "stdout" in sinks:
                self._sink = stdout_sink()
            else:
                self._sink = FanOut()  # the database only
        self._task = asyncio.get_running_loop().create_task(
            self._consume(self._sink), name="request-log"
        )

    def submit(self, rec: RequestRecord) -> None:
        """Render a finished request's line and queue it; drop and count it when the queue is
        full (before rendering) or a field cannot be encoded."""
        if self._closed:
            self._metrics.log_record_dropped()
            return
        lines = self._lines
        if len(lines) >= self._queue_size:
            self._metrics.log_record_dropped()
            self._metrics.set_log_queue_depth(self._queue_size)
            return
        line = self._render(rec)
        if line is None:
            self._metrics.log_record_dropped()
            return
        lines.append(line)
        self._wake()

    def _wake(self) -> None:
        waiter = self._wakeup
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _render(self, rec: RequestRecord) -> bytes | None:
        """The record's line, None when a field cannot be encoded (the line is lost, not
        the log)."""
        try:
            return render_line(rec, self._drop_secrets, log_bodies=self._log_bodies)
        except TypeError:
            return None

    # The drain deadline belongs to the log (it knows what it drops when it passes).
    async def aclose(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Write everything queued, then close the sink. Records submitted from now on are
        dropped. After `timeout` seconds the rest is dropped (and counted) instead."""
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        if task is None:
            self._drop_queued()
            await self._close_sink()
            return
        self._wake()  # a writer task waiting for lines: there will be none
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._drop_queued()
            # The sink is stuck in a write on another thread; closing it under that write
            # could corrupt the file, so it is left to the process exit.
            _log.warning("request log: sink still blocked after %.1fs, records dropped", timeout)
            return
        await self._close_sink()
        self._metrics.set_log_queue_depth(0)

    async def _close_sink(self) -> None:
        if self._sink is None:
            return
        try:
            await asyncio.to_thread(self._sink.close)
        except OSError as exc:  # the last flush failed (disk full, pipe gone): say so, go on
            _log.warning("request log: closing the sink failed (%s)", exc)

    def _drop_queued(self) -> None:
        dropped = len(self._lines)
        self._lines.clear()
        self._metrics.log_record_dropped(dropped)
        self._metrics.set_log_queue_depth(0)

    async def _consume(self, sink: Sink) -> None:
        lines = self._lines
        loop = asyncio.get_running_loop()
        while not (self._closed and not lines):
            if not lines:
                self._wakeup = loop.create_future()
                try:
                    await self._wakeup
                finally:
                    self._wakeup = None
                continue
            if not self._closed and len(lines) <= self._batch_size:
                # Linger a moment so a trickle of requests is written in batches: each batch
                # is one hand-off to the writer thread.
                await asyncio.sleep(_LINGER_S)
            batch = [lines.popleft() for _ in range(min(len(lines), self._batch_size))]
            self._metrics.set_log_queue_depth(len(lines))
            if not batch:
                continue
            if self._ledger is not None:
                self._ledger.add(batch)
            try:
                await asyncio.to_thread(self._write_batch, sink, batch)
            except Exception:
                # A broken sink costs this batch, never the log: the next batch is tried.
                _log.exception("request log: batch of %d records lost", len(batch))
                self._metrics.log_record_dropped(len(batch))

    def _write_batch(self, sink: Sink, lines: list[bytes]) -> None:
        """Write one batch (in a worker thread; one batch at a time)."""
        try:
            sink.write(lines)
        except (OSError, ValueError) as exc:  # ValueError: a closed stream
            _log.warning("request log: sink write failed (%s), records dropped", exc)
            self._metrics.log_record_dropped(len(lines))


# --- the gateway's own logs -----------------------------------------------------------------


def configure_process_logging(
    *, level: str = "INFO", json: bool | None = None, stream: TextIO | None = None
) -> logging.Handler:
    """One pipeline for every process log line: the gateway's structlog loggers, the stdlib
    loggers (the gateway's, uvicorn's, asyncio's) and `warnings`, all rendered by one
    structlog formatter on one handler, to `stream` (default stderr; stdout is the request
    log's). JSON lines, or a console layout for a person: `json=None` picks by whether the
    stream is a terminal, unless GATEWAY_LOG_FORMAT says `json` or `console`.

    Call it once per process, before anything logs; it replaces the root logger's handlers
    and structlog's configuration, and returns the new handler (tests remove it again).
    """
    out = stream if stream is not None else sys.stderr
    if json is None:
        json = logs_as_json(out)
    # The same fields whether the line came through structlog or a stdlib logger.
    shared: list[Any] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    last: list[Any] = (
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        if json
        else [structlog.dev.ConsoleRenderer()]
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *last],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    logging.captureWarnings(True)
    return handler


LOG_FORMAT_ENV = "GATEWAY_LOG_FORMAT"
"""`json` or `console` overrides the choice `configure_process_logging` makes by itself."""


def logs_as_json(stream: TextIO) -> bool:
    """Whether process logs written to `stream` should be JSON lines: yes unless it is a
    terminal, or GATEWAY_LOG_FORMAT says."""
    chosen = os.environ.get(LOG_FORMAT_ENV, "").strip().lower()
    if chosen in ("json", "console"):
        return chosen == "json"
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return True
