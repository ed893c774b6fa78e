"""Relaying one answer to the client: a token stream, or a plain JSON answer.

The streaming rules (README, "Streaming semantics"), in the order a stream meets them:

1. Open the upstream and wait for its first event under the first-token timeout, with
   retries and fallbacks (`attempts`). Until that event arrives nothing has been sent, so
   any failure is still an HTTP status the SDKs raise on.
2. Send the headers and the first event, then each upstream read's events the moment they
   arrive (a read that carries several events is sent as one write: nothing is held back).
   Streams on the native transport are pushed: each read is sent from the upstream
   connection's callback, with no task wakeup per read (`pump`); others are iterated.
3. End in exactly one outcome: `completed` (the answer finished; `[DONE]` sent), or a
   failure after the first byte: an SSE error event and a close, never a clean `[DONE]`.
   An answer is settled once it is whole: the finish and `[DONE]` were sent to the client.
   What happens between that and the upstream's own end of body (the client hangs up, an
   upstream that holds the body open meets the idle timeout or breaks the connection)
   changes nothing: `completed`, with the usage reported, and no error event follows.

The upstream response is closed in a `finally` on every path, before anything else is sent,
so a client that leaves frees the provider within the same event-loop turn.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from time import perf_counter

import httpx
from starlette.types import Receive, Send

from gateway.asgi import SSE_HEADERS, BodyWriter, ClientGone, DisconnectHook, Headers, send_bytes
from gateway.config import ModelConfig, Timeouts
from gateway.errors import GatewayError, Outcome, StreamEnded, UpstreamError, UpstreamTimeout
from gateway.observability.metrics import Metrics
from gateway.observability.records import RequestRecord
from gateway.providers.base import Completion, EventStream, Provider, UpstreamCall, Usage
from gateway.relay.attempts import Attempts
from gateway.relay.pump import Pump, start_send
from gateway.relay.request import ClientRequest
from gateway.relay.watch import Alarms, StreamWatch, first_check_s
from gateway.routing import Router

_DONE = b"data: [DONE]\n\n"
_FINAL_SEND_TIMEOUT = 5.0


@dataclass(slots=True)
class RelayContext:
    """What one request's relay needs from the edge (built by the endpoint). Slotted: it
    lives as long as its stream, and thousands of open streams keep no dict each."""

    request: ClientRequest
    models: list[ModelConfig]
    """The requested model first, then its fallbacks."""
    request_id: str
    record: RequestRecord
    headers: Headers
    started_at: float
    disconnect: DisconnectHook | None = None
    """The server's disconnect hook, when it offers one (`gateway serve` does)."""
    writer: BodyWriter | None = None
    """The server's direct body writer, when it offers one (`gateway serve` does)."""
    reserved_tokens: int = 0
    """The tokens admission reserved (prompt estimate + max_tokens): what an upstream
    account limit is asked for (`gateway.routing`)."""

    def call_for(self, model: ModelConfig) -> UpstreamCall:
        req = self.request
        # Positional, in the fields' order: a quarter of the call's cost by keyword.
        return UpstreamCall(
            req.route,
            req.body,
            model,
            req.stream,
            req.include_usage,
            self.request_id,
            req.api,
            req.passed_headers,
        )


class Relay:
    """Relays answers from the providers: built once by the runtime with what every request
    shares (the providers, the metrics, the gateway's timeouts, the open requests'
    watches); each request brings its own `RelayContext`. A request's watch starts under
    the gateway's timeouts; each attempt times it by its deployment's (`call.model.timeouts`,
    see `gateway.relay.watch`).

    A failure before the answer started is raised (a `GatewayError`, or `ClientGone`) for
    the edge to answer in its API's shape; after that, the stream ends with an SSE error
    event, as the module docstring says.
    """

    __slots__ = (
        "_alarms",
        "_first_check",
        "log_bodies",
        "metrics",
        "providers",
        "router",
        "timeouts",
        "watches",
    )

    def __init__(
        self,
        providers: Mapping[str, Provider],
        metrics: Metrics,
        timeouts: Timeouts,
        log_bodies: bool,
        watches: set[StreamWatch],
        router: Router,
    ) -> None:
        self.providers = providers
        self.router = router
        """Which deployment each attempt goes to (`gateway.routing`)."""
        self.metrics = metrics
        self.timeouts = timeouts
        self._first_check = first_check_s(timeouts)
        self.log_bodies = log_bodies
        self.watches = watches
        """Every open request's watch: shutdown ends them, tests check none is left."""
        self._alarms: Alarms | None = None
        """The watches' shared timers, made on the first request (in the loop it serves)."""

    # --- a token stream ---------------------------------------------------------------------

    async def stream(self, ctx: RelayContext, receive: Receive, send: Send) -> None:
        watch = self._watch(ctx, receive, send, self._first_check)
        rec = ctx.record
        rec.overhead_s = perf_counter() - ctx.started_at
        try:
            # The upstream stream and its first event, with failover, retries and
            # fallbacks; and the lease of the deployment it came from.
            (upstream, first), lease = await Attempts(
                self.router,
                self.providers,
                ctx.call_for,
                self._open_first,
                rec,
                self.metrics,
                ctx.reserved_tokens,
                watch,
                _stream_headers,
            ).first_answer(ctx.models)
        except asyncio.CancelledError:
            self._unwatch(watch)
            if watch.ended is None:
                raise  # not the watch's: the server's own cancellation
            raise self._stopped_early(watch) from None
        except BaseException:
            self._unwatch(watch)
            raise
        try:
            outcome, error, client_left, held = await self._relay(ctx, watch, upstream, first, send)
        finally:
            self.router.finish(lease, rec.prompt_tokens + rec.completion_tokens)
        rest = self._finish(ctx, upstream, outcome, error, client_left, send, held)
        if rest is not None:
            await self._end_late(rest, rec)

    async def _open_first(
        self, provider: Provider, call: UpstreamCall, watch: StreamWatch
    ) -> tuple[EventStream, bytes]:
        """Open the upstream stream and wait for its first event under the first-token
        timeout of the attempt's deployment (the watch's timer:
        `StreamWatch.expect_first_token`)."""
        watch.expect_first_token(call.model.timeouts)
        stream: EventStream | None = None
        opened = False
        try:
            stream = await provider.open_stream(call)
            first = await stream.__anext__()
            opened = True
            return stream, first
        except asyncio.CancelledError:
            if not watch.first_token_late():
                raise
            raise _first_token_timeout(provider, watch) from None
        except TimeoutError:  # a timeout of the transport's that escaped unconverted
            raise _first_token_timeout(provider, watch) from None
        except StopAsyncIteration:
            raise UpstreamError(
                f"provider {provider.config.name!r} ended the stream before its first event",
                kind="truncated",
                retryable=True,
            ) from None
        finally:
            watch.first_token_seen()
            if stream is not None and not opened:
                await _close_quietly(stream)

    async def _relay(
        self,
        ctx: RelayContext,
        watch: StreamWatch,
        upstream: EventStream,
        first: bytes,
        send: Send,
    ) -> tuple[Outcome, GatewayError | None, bool, bytes]:
        """Send the answer: the first event, then each upstream read as it arrives, until
        the stream ends. Its outcome, the error to tell the client, whether the client left
        after the answer was whole, and the stream's last read when it is still to be sent
        (with the end: `Pump.tail`). The upstream is closed and the tokens accounted on
        every path."""
        rec = ctx.record
        model_label = ctx.models[0].name
        started = False
        error: GatewayError | None = None
        client_left = False
        pump: Pump | None = None
        try:
            try:
                received_at = perf_counter()
                headers = [*SSE_HEADERS, *ctx.headers]
                # Under `gateway serve`, the head and the first event in one call when the
                # server would write them at once (the usual case): two messages and
                # coroutines less than the two sends.
                writer = ctx.writer
                direct = writer is not None and writer.start(200, headers, first)
                if not direct:
                    await send({"type": "http.response.start", "status": 200, "headers": headers})
                started = True
                rec.status = 200
                self.metrics.stream_opened(model_label)
                watch.start_relaying()
                if not direct:
                    watch.sending_since = watch.last_read
                    await send({"type": "http.response.body", "body": first, "more_body": True})
                    watch.sending_since = 0.0
                last = perf_counter()
                rec.ttft_s = last - ctx.started_at
                rec.overhead_s += last - received_at
                gaps = rec.inter_token_s
                if upstream.state.over:
                    # The whole answer came in the first read, with the body's end: nothing
                    # to relay, so no pump (its making and its run: 8,500 instructions, measured).
                    pass
                elif upstream.push(pump := Pump(send, watch, gaps, last, ctx.writer)):
                    await pump.run(upstream)
                else:
                    async for chunk in upstream:
                        now = perf_counter()
                        gaps.append(now - last)
                        last = watch.last_read = watch.sending_since = now
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                        watch.sending_since = 0.0
                outcome: Outcome = "completed" if upstream.state.finished else "truncated"
            except asyncio.CancelledError:
                if watch.ended is None:
                    raise
                if not started:
                    raise self._stopped_early(watch) from None
                outcome = self._stopped(watch)
                if _answered(upstream, watch):
                    client_left = outcome == "client_cancelled"
                    outcome = "completed"
                elif outcome != "client_cancelled":
                    error = _ended_error(outcome, watch.timeouts)
            except GatewayError as exc:
                if not started:
                    raise
                if _answered(upstream, watch):
                    outcome = "completed"  # the upstream broke after the answer was whole
                else:
                    error, outcome = exc, exc.outcome
        finally:
            self._unwatch(watch)
            # As `_close_quietly`, without a coroutine of its own on every request's path
            # (nor `contextlib.suppress`'s object and calls, 0.65 µs: a bare try costs nothing).
            try:  # noqa: SIM105
                await upstream.aclose()
            except (GatewayError, OSError, httpx.HTTPError):
                pass
            if started:
                self.metrics.stream_closed(model_label)
            state = upstream.state
            _account(rec, ctx, state.usage, state.completion_estimate, state.finished)
            if rec.trace is not None:
                rec.trace.finish_reason = state.finish_reason
            if self.log_bodies:
                rec.response_text = state.kept_text()
        return outcome, error, client_left, b"" if pump is None else pump.tail

    def _finish(
        self,
        ctx: RelayContext,
        upstream: EventStream,
        outcome: Outcome,
        error: GatewayError | None,
        client_left: bool,
        send: Send,
        held: bytes = b"",
    ) -> Awaitable[None] | None:
        """Record the outcome and end the response: `[DONE]` when the upstream did not send
        it, an SSE error event on a failure, nothing when nobody reads. The end is written
        at once in the usual case; else the rest of its send is returned, for the caller to
        await under a timeout (`_end_late`): no coroutine for the usual case. `held`: the
        stream's last read, not sent yet, goes first in the same write."""
        rec = ctx.record
        rec.outcome = outcome
        tail = b""
        state = upstream.state
        if outcome == "completed":
            if not state.done_sent:
                tail = _DONE if state.end_event is None else state.end_event()
        elif outcome != "client_cancelled":
            failure = self._failed(rec, outcome, error)
            # In the client's API: Chat's error chunk, else what the stream writes for it.
            tail = failure.sse() if state.error_event is None else state.error_event(failure)
        if outcome in ("client_cancelled", "slow_client") or client_left:
            return None  # nobody reads: uvicorn closes the connection of an unfinished response
        body = held + tail if held else tail
        writer = ctx.writer
        if writer is not None and writer.end(body):
            return None  # written at once by the server, without a message and a coroutine
        return start_send(send, {"type": "http.response.body", "body": body, "more_body": False})

    @staticmethod
    async def _end_late(rest: Awaitable[None], rec: RequestRecord) -> None:
        try:
            # A client that stops reading right now must not pin this task on a full buffer.
            async with asyncio.timeout(_FINAL_SEND_TIMEOUT):
                await rest
        except TimeoutError:
            rec.outcome = "slow_client"

    def _failed(
        self, rec: RequestRecord, outcome: Outcome, error: GatewayError | None
    ) -> GatewayError:
        """The error that ends a failed stream, recorded and counted."""
        if error is None:
            if outcome == "truncated":
                error = UpstreamError(
                    f"provider {rec.provider!r} ended the stream before the answer finished",
                    kind="truncated",
                )
            else:
                error = _ended_error(outcome, self.timeouts)
        if isinstance(error, UpstreamError):
            self.metrics.upstream_error(rec.provider, error.kind)
        rec.error = error.message
        return error

    # --- a plain answer ----------------------------------------------------------------------

    async def complete(self, ctx: RelayContext, receive: Receive, send: Send) -> None:
        rec = ctx.record
        watch = self._watch(ctx, receive, send)
        rec.overhead_s = perf_counter() - ctx.started_at
        try:
            result, lease = await Attempts(
                self.router,
                self.providers,
                ctx.call_for,
                _complete,
                rec,
                self.metrics,
                ctx.reserved_tokens,
                watch,
                _answer_headers,
            ).first_answer(ctx.models)
        except asyncio.CancelledError:
            if watch.ended is None:
                raise
            raise self._stopped_early(watch) from None
        finally:
            self._unwatch(watch)
        _account(rec, ctx, result.usage, 0, True)
        self.router.finish(lease, rec.prompt_tokens + rec.completion_tokens)
        rec.status = result.status
        if self.log_bodies:
            rec.response_text = result.body.decode("utf-8", "replace")
        headers = [(b"content-type", result.content_type.encode()), *ctx.headers]
        await send_bytes(send, result.status, result.body, headers)
        rec.ttft_s = perf_counter() - ctx.started_at

    # --- the watch ---------------------------------------------------------------------------

    def _watch(
        self, ctx: RelayContext, receive: Receive, send: Send, first_check: float = 0.0
    ) -> StreamWatch:
        alarms = self._alarms
        if alarms is None:
            alarms = self._alarms = Alarms(asyncio.get_running_loop())
        watch = StreamWatch(send, self.timeouts, alarms)
        watch.start(receive, ctx.disconnect, first_check)
        self.watches.add(watch)
        return watch

    def _unwatch(self, watch: StreamWatch) -> None:
        watch.stop()
        self.watches.discard(watch)

    @staticmethod
    def _stopped(watch: StreamWatch) -> Outcome:
        """Why the watch cancelled the task; only after it did (`watch.ended` is set)."""
        outcome = watch.ended
        assert outcome is not None
        watch.task.uncancel()
        return outcome

    def _stopped_early(self, watch: StreamWatch) -> BaseException:
        """What to raise when the watch stopped the request before its answer started."""
        outcome = self._stopped(watch)
        if outcome == "client_cancelled":
            return ClientGone()
        return _ended_error(outcome, watch.timeouts)


def _first_token_timeout(provider: Provider, watch: StreamWatch) -> UpstreamTimeout:
    return UpstreamTimeout(
        f"provider {provider.config.name!r} sent no first token within "
        f"{watch.timeouts.first_token:g} s",
        kind="first_token_timeout",
    )


def _ended_error(outcome: Outcome, timeouts: Timeouts) -> GatewayError:
    """The error of a request the watch ended, worded with the timeouts it ran under."""
    if outcome == "idle_timeout":
        return StreamEnded(
            f"the upstream sent nothing for {timeouts.idle:g} s",
            outcome=outcome,
            code="idle_timeout",
        )
    if outcome == "slow_client":
        return StreamEnded(
            "the client did not read the stream for too long",
            outcome=outcome,
            code="slow_client",
        )
    if outcome == "shutdown":
        return StreamEnded(
            "the gateway is shutting down and the grace period ran out",
            outcome=outcome,
            code="shutdown",
        )
    return UpstreamTimeout(
        f"the request ran past its total timeout ({timeouts.total:g} s)", kind="total_timeout"
    )


async def _complete(provider: Provider, call: UpstreamCall, watch: StreamWatch) -> Completion:
    timeouts = call.model.timeouts
    if timeouts is not None and timeouts is not watch.timeouts:
        watch.use(timeouts)  # the total of this attempt's deployment
    return await provider.complete(call)


def _stream_headers(opened: tuple[EventStream, bytes]) -> Mapping[str, str] | None:
    return opened[0].state.upstream_headers


def _answer_headers(answer: Completion) -> Mapping[str, str] | None:
    return answer.upstream_headers


def _answered(stream: EventStream, watch: StreamWatch) -> bool:
    """The answer is whole on the client's side: finished, `[DONE]` relayed, and no send
    of it still waiting on the client (`sending_since`)."""
    state = stream.state
    return state.finished and state.done_sent and not watch.sending_since


def _account(
    rec: RequestRecord,
    ctx: RelayContext,
    usage: Usage | None,
    completion_estimate: int,
    finished: bool,
) -> None:
    """Tokens to charge: the provider's usage when it came, else what was relayed."""
    if usage is not None:
        rec.cached_tokens, rec.cache_write_tokens = usage.cached_tokens, usage.cache_write_tokens
        rec.reasoning_tokens = usage.reasoning_tokens
    if usage is not None and finished:
        rec.prompt_tokens, rec.completion_tokens = usage.prompt_tokens, usage.completion_tokens
        rec.usage_reported = True
        return
    rec.prompt_tokens = usage.prompt_tokens if usage else ctx.request.prompt_estimate
    rec.completion_tokens = max(usage.completion_tokens if usage else 0, completion_estimate)


async def _close_quietly(stream: EventStream) -> None:
    # Closing a half-read response can fail the same way the read did; the outcome is
    # already decided and the connection is being discarded either way.
    with contextlib.suppress(GatewayError, OSError, httpx.HTTPError):
        await stream.aclose()
