"""OpenTelemetry traces of finished requests, exported over OTLP/HTTP off the request path.

Imported only when `tracing:` is configured (`gateway.app`): with tracing off, neither this
module nor the OpenTelemetry SDK is loaded. A request carries only ids and timings while it
runs (`trace_context`); its spans are built here from the finished `RequestRecord`, with
explicit start and end times, among the other finished-request bookkeeping
(`observability/finished.py`). Each request leaves one SERVER span, and one CLIENT child per
upstream attempt (retries, fallbacks), with the GenAI semantic conventions' attributes
(`gen_ai.provider.name`, the current name for what was `gen_ai.system`).

The spans are the SDK's `ReadableSpan`s made directly, with the ids the request minted (and
sent upstream in `traceparent`) and its timings, then handed to the batch processor: the
tracer's `start_span` validates every attribute through locks and checks (about 180 us for a
request's two spans on the bench machine, against 5 us this way; docs/tracing.md), and
would mint its own ids. Sampling was decided when the request arrived.

Export is the SDK's `BatchSpanProcessor` (a daemon thread, batches) and OTLP/HTTP exporter.
What never slows a stream: spans wait in a bounded queue, an export gives up after
`export_timeout` seconds, and a span that finds the queue full is dropped at once. Both
losses are counted in `gateway_trace_spans_dropped_total` (`_Bounded` keeps the count of
spans in flight, so the SDK's own queue, which drops silently, never fills).

Not here: metrics (Prometheus has them), request or response bodies (never in a span).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Sequence

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util.types import AttributeValue

from gateway.config import GatewayConfig, TracingConfig
from gateway.observability.records import RequestRecord
from gateway.observability.trace_context import AttemptTiming, RequestTrace

_OPERATIONS = {
    "chat.completions": "chat",
    "responses": "chat",
    "messages": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
}
_SCHEDULE_MS = 1000
_BATCH = 512

Dropped = Callable[[int], None]


class Tracing:
    """The span pipeline of one process: spans from records, bounded batch export, drops."""

    def __init__(self, config: GatewayConfig, dropped: Dropped) -> None:
        tracing = config.tracing
        assert tracing is not None
        # process.pid: which worker (`--workers N`: each builds its own pipeline)
        self._resource = Resource.create(
            {"service.name": tracing.service_name, "process.pid": os.getpid()}
        )
        self._scope = InstrumentationScope("gateway")
        exporter = _CountingExporter(
            OTLPSpanExporter(endpoint=traces_url(tracing), timeout=tracing.export_timeout),
            dropped,
        )
        batches = BatchSpanProcessor(
            exporter,
            max_queue_size=tracing.max_queue_size,
            schedule_delay_millis=_SCHEDULE_MS,
            max_export_batch_size=min(_BATCH, tracing.max_queue_size),
            export_timeout_millis=tracing.export_timeout * 1000,
        )
        self._processor = _Bounded(batches, exporter, tracing.max_queue_size, dropped)
        self._provider_types = {p.name: p.type for p in config.providers}

    def record(self, rec: RequestRecord) -> None:
        """A finished request's spans, queued for export (a `Finished` handler)."""
        trace = rec.trace
        if trace is None:
            return
        operation = _OPERATIONS.get(rec.route, rec.route)
        answered = _answering(trace)
        attrs: dict[str, AttributeValue] = {
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": rec.model,
            "gateway.request_id": rec.request_id,
            "gateway.route": rec.route,
            "gateway.key_id": rec.key_id,
            "gateway.outcome": rec.outcome,
            "gateway.stream": rec.stream,
            "gateway.attempts": rec.attempts,
            "http.response.status_code": rec.status,
        }
        if rec.provider:
            attrs["gen_ai.provider.name"] = self._provider_types.get(rec.provider, rec.provider)
            attrs["gateway.provider"] = rec.provider
        if answered is not None:
            attrs["gen_ai.response.model"] = answered.upstream_model
            attrs["gateway.model"] = answered.model
            if answered.deployment:
                attrs["gateway.deployment"] = answered.deployment
        if rec.prompt_tokens or rec.completion_tokens:
            attrs["gen_ai.usage.input_tokens"] = rec.prompt_tokens
            attrs["gen_ai.usage.output_tokens"] = rec.completion_tokens
            attrs["gateway.usage_reported"] = rec.usage_reported
        if trace.finish_reason:
            attrs["gen_ai.response.finish_reasons"] = (trace.finish_reason,)
        if rec.ttft_s is not None:
            attrs["gateway.ttft_ms"] = round(rec.ttft_s * 1000, 3)
        if rec.cost_nanos:
            attrs["gateway.cost_usd"] = rec.cost_nanos / 1e9
        if rec.error:
            attrs["error.type"] = rec.outcome
        context = _context(trace.trace_id, trace.span_id)
        parent = None
        if trace.parent_span_id:
            parent = _context(trace.trace_id, trace.parent_span_id, remote=True)
        end_ns = trace.start_ns + int(rec.duration_s * 1e9)
        failed = rec.outcome != "completed" or rec.status >= 500
        for attempt in trace.attempts:
            # The stream that answered ran until the request ended; its attempt's own end is
            # its first event (`gateway.first_event_ms`).
            relayed = rec.stream and attempt is answered
            self._attempt_span(trace, attempt, operation, context, end_ns if relayed else 0)
        self._processor.on_end(
            ReadableSpan(
                f"{operation} {rec.model}".rstrip(),
                context,
                parent,
                self._resource,
                attrs,
                kind=SpanKind.SERVER,
                status=Status(StatusCode.ERROR, rec.error[:200] or rec.outcome)
                if failed
                else _UNSET,
                start_time=trace.start_ns,
                end_time=end_ns,
                instrumentation_scope=self._scope,
            )
        )

    def _attempt_span(
        self,
        trace: RequestTrace,
        attempt: AttemptTiming,
        operation: str,
        parent: SpanContext,
        stream_end_ns: int,
    ) -> None:
        attrs: dict[str, AttributeValue] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": self._provider_types.get(attempt.provider, attempt.provider),
            "gen_ai.request.model": attempt.upstream_model,
            "gateway.provider": attempt.provider,
            "gateway.model": attempt.model,
        }
        if attempt.deployment:
            attrs["gateway.deployment"] = attempt.deployment
        if attempt.error:
            attrs["error.type"] = attempt.error
        elif attempt.end:
            attrs["gateway.first_event_ms"] = round((attempt.end - attempt.start) * 1000, 3)
        start_ns = trace.unix_ns(attempt.start)
        # An attempt with no end (it cannot have none: the request ended) ends at its start.
        end_ns = stream_end_ns or trace.unix_ns(max(attempt.end, attempt.start))
        self._processor.on_end(
            ReadableSpan(
                f"{operation} {attempt.upstream_model}",
                _context(trace.trace_id, attempt.span_id),
                parent,
                self._resource,
                attrs,
                kind=SpanKind.CLIENT,
                status=Status(StatusCode.ERROR, attempt.error) if attempt.error else _UNSET,
                start_time=start_ns,
                end_time=max(end_ns, start_ns),
                instrumentation_scope=self._scope,
            )
        )

    async def aclose(self) -> None:
        """Export what is queued (each export bounded by its timeout), then stop the thread."""
        await asyncio.to_thread(self._processor.shutdown)


def traces_url(config: TracingConfig) -> str:
    """The OTLP/HTTP traces URL: a base URL gets the signal path `/v1/traces`."""
    endpoint = config.otlp_endpoint.rstrip("/")
    scheme, _, rest = endpoint.partition("://")
    return endpoint if "/" in rest else f"{scheme}://{rest}/v1/traces"


def _answering(trace: RequestTrace) -> AttemptTiming | None:
    """The attempt that answered (the last one, when it did not fail)."""
    if trace.attempts and not trace.attempts[-1].error:
        return trace.attempts[-1]
    return None


def _context(trace_id: int, span_id: int, *, remote: bool = False) -> SpanContext:
    return SpanContext(trace_id, span_id, is_remote=remote, trace_flags=_SAMPLED)


_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSET = Status(StatusCode.UNSET)


class _CountingExporter(SpanExporter):
    """The OTLP exporter, counting what it could not deliver and what left the queue."""

    def __init__(self, exporter: SpanExporter, dropped: Dropped) -> None:
        self._exporter = exporter
        self._dropped = dropped
        self._lock = threading.Lock()
        self.in_flight = 0
        """Spans handed to the batch processor and not yet through an export."""

    def added(self, bound: int) -> bool:
        with self._lock:
            if self.in_flight >= bound:
                return False
            self.in_flight += 1
            return True

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._exporter.export(spans)
        except Exception:
            result = SpanExportResult.FAILURE
        with self._lock:
            self.in_flight -= len(spans)
        if result is not SpanExportResult.SUCCESS:
            self._dropped(len(spans))
        return result

    def shutdown(self) -> None:
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._exporter.force_flush(timeout_millis)


class _Bounded(SpanProcessor):
    """The batch processor behind a bound it cannot reach: a span that would overflow the
    queue is dropped here, and counted (the SDK's queue would drop one silently)."""

    def __init__(
        self,
        batches: BatchSpanProcessor,
        exporter: _CountingExporter,
        bound: int,
        dropped: Dropped,
    ) -> None:
        self._batches = batches
        self._exporter = exporter
        self._bound = bound
        self._dropped = dropped

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        if self._exporter.added(self._bound):
            self._batches.on_end(span)
        else:
            self._dropped(1)

    def shutdown(self) -> None:
        self._batches.shutdown()  # type: ignore[no-untyped-call]

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._batches.force_flush(timeout_millis)
