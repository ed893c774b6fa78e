"""Relaying one answer to the client: a token stream, or a plain JSON answer.

The streaming rules (SPEC section 5), in the order a stream meets them:

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
from dataclasses import dataclass
from time import perf_counter

import httpx
from starlette.types import Receive, Send

from gateway.config import ModelConfig
from gateway.edge.http import (
    SSE_HEADERS,
    BodyWriter,
    ClientGone,
    DisconnectHook,
    Headers,
    send_bytes,
)
from gateway.edge.requests import ClientRequest
from gateway.errors import GatewayError, Outcome, StreamEnded, UpstreamError, UpstreamTimeout
from gateway.observability.records import RequestRecord
from gateway.providers.base import Completion, EventStream, Provider, UpstreamCall, Usage
from gateway.relay.attempts import Attempt, with_fallbacks
from gateway.relay.pump import Pump, start_send
from gateway.relay.watch import StreamWatch
from gateway.state import GatewayState

_DONE = b"data: [DONE]\n\n"
_FINAL_SEND_TIMEOUT = 5.0


@dataclass
class RelayContext:
    """What one request's relay needs from the app (built by the endpoint)."""

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


def _ended_error(outcome: Outcome, ctx: RelayContext, timeouts_idle: float) -> GatewayError:
    if outcome == "idle_timeout":
        return StreamEnded(
            f"the upstream sent nothing for {timeouts_idle:g} s",
            outcome=outcome,
            code="idle_timeout",
        )
    if outcome == "slow_client":
        return StreamEnded(
            "the client did not read the stream for too long", outcome=outcome, code="slow_client"
        )
    if outcome == "shutdown":
        return StreamEnded(
            "the gateway is shutting down and the grace period ran out",
            outcome=outcome,
            code="shutdown",
        )
    return UpstreamTimeout("the request ran past the gateway's total timeout", kind="total_timeout")


def _call_for(ctx: RelayContext, model: ModelConfig) -> UpstreamCall:
    req = ctx.request
    return UpstreamCall(
        route=req.route,
        body=req.body,
        model=model,
        stream=req.stream,
        include_usage=req.include_usage,
        request_id=ctx.request_id,
    )


def _opener(first_token: float) -> Attempt[tuple[EventStream, bytes]]:
    async def open_first(provider: Provider, call: UpstreamCall) -> tuple[EventStream, bytes]:
        return await _open(provider, call, first_token)

    return open_first


async def _open(
    provider: Provider, call: UpstreamCall, first_token: float
) -> tuple[EventStream, bytes]:
    """Open the upstream stream and wait for its first event under the first-token timeout."""
    stream: EventStream | None = None
    opened = False
    try:
        async with asyncio.timeout(first_token):
            stream = await provider.open_stream(call)
            first = await stream.__anext__()
        opened = True
        return stream, first
    except TimeoutError:
        raise UpstreamTimeout(
            f"provider {provider.config.name!r} sent no first token within {first_token:g} s",
            kind="first_token_timeout",
        ) from None
    except StopAsyncIteration:
        raise UpstreamError(
            f"provider {provider.config.name!r} ended the stream before its first event",
            kind="truncated",
            retryable=True,
        ) from None
    finally:
        if stream is not None and not opened:
            await _close_quietly(stream)


async def relay_stream(st: GatewayState, ctx: RelayContext, receive: Receive, send: Send) -> None:
    rec = ctx.record
    watch = StreamWatch(send, st.config.timeouts)
    watch.start(receive, ctx.disconnect)
    st.watches.add(watch)
    stream: EventStream | None = None
    outcome: Outcome | None = None
    error: GatewayError | None = None
    started = False
    client_left = False
    model_label = ctx.models[0].name
    try:
        try:
            upstream_at = perf_counter()
            rec.overhead_s = upstream_at - ctx.started_at
            upstream, first = await with_fallbacks(
                ctx.models,
                st.providers,
                lambda m: _call_for(ctx, m),
                _opener(st.config.timeouts.first_token),
                rec,
                st.metrics,
            )
            stream = upstream
            received_at = perf_counter()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [*SSE_HEADERS, *ctx.headers],
                }
            )
            started = True
            rec.status = 200
            st.metrics.stream_opened(model_label)
            watch.start_relaying()
            watch.sending_since = watch.last_read
            await send({"type": "http.response.body", "body": first, "more_body": True})
            watch.sending_since = 0.0
            last = perf_counter()
            rec.ttft_s = last - ctx.started_at
            rec.overhead_s += last - received_at
            gaps = rec.inter_token_s
            pump = Pump(send, watch, gaps, last, ctx.writer)
            if upstream.push(pump):
                await pump.run(upstream)
            else:
                async for chunk in upstream:
                    now = perf_counter()
                    gaps.append(now - last)
                    last = watch.last_read = watch.sending_since = now
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    watch.sending_since = 0.0
            outcome = "completed" if upstream.state.finished else "truncated"
        except asyncio.CancelledError:
            if watch.ended is None:
                raise
            watch.task.uncancel()
            outcome = watch.ended
            if not started:
                if outcome == "client_cancelled":
                    raise ClientGone() from None
                raise _ended_error(outcome, ctx, st.config.timeouts.idle) from None
            if stream is not None and _answered(stream, watch):
                client_left = outcome == "client_cancelled"
                outcome = "completed"
        except GatewayError as exc:
            if not started:
                raise
            if stream is not None and _answered(stream, watch):
                outcome = "completed"  # the upstream broke after the answer was whole
            else:
                error, outcome = exc, exc.outcome
    finally:
        watch.stop()
        st.watches.discard(watch)
        if stream is not None:
            await _close_quietly(stream)
        if started:
            st.metrics.stream_closed(model_label)
        if stream is not None:
            _account(
                rec,
                ctx,
                stream.state.usage,
                stream.state.completion_estimate,
                stream.state.finished,
            )
            if st.config.log_bodies:
                rec.response_text = stream.state.kept_text()

    assert outcome is not None and stream is not None
    rec.outcome = outcome
    tail = b""
    if outcome == "completed":
        if not stream.state.done_sent:
            tail = _DONE
    elif outcome != "client_cancelled":
        if error is None:
            if outcome == "truncated":
                error = UpstreamError(
                    f"provider {rec.provider!r} ended the stream before the answer finished",
                    kind="truncated",
                )
            else:
                error = _ended_error(outcome, ctx, st.config.timeouts.idle)
        if isinstance(error, UpstreamError):
            st.metrics.upstream_error(rec.provider, error.kind)
        rec.error = error.message
        tail = error.sse()
    if outcome in ("client_cancelled", "slow_client") or client_left:
        return  # nobody reads: uvicorn closes the connection of an unfinished response
    end = {"type": "http.response.body", "body": tail, "more_body": False}
    rest = start_send(send, end)
    if rest is None:
        return  # written at once, the usual case: no timer needed
    try:
        # A client that stops reading right now must not pin this task on a full buffer.
        async with asyncio.timeout(_FINAL_SEND_TIMEOUT):
            await rest
    except TimeoutError:
        rec.outcome = "slow_client"


async def relay_completion(
    st: GatewayState, ctx: RelayContext, receive: Receive, send: Send
) -> None:
    rec = ctx.record
    watch = StreamWatch(send, st.config.timeouts)
    watch.start(receive, ctx.disconnect)
    st.watches.add(watch)
    rec.overhead_s = perf_counter() - ctx.started_at

    async def attempt(provider: Provider, call: UpstreamCall) -> Completion:
        return await provider.complete(call)

    try:
        result = await with_fallbacks(
            ctx.models, st.providers, lambda m: _call_for(ctx, m), attempt, rec, st.metrics
        )
    except asyncio.CancelledError:
        if watch.ended is None:
            raise
        watch.task.uncancel()
        if watch.ended == "client_cancelled":
            raise ClientGone() from None
        raise _ended_error(watch.ended, ctx, st.config.timeouts.idle) from None
    finally:
        watch.stop()
        st.watches.discard(watch)
    _account(rec, ctx, result.usage, 0, True)
    rec.status = result.status
    if st.config.log_bodies:
        rec.response_text = result.body.decode("utf-8", "replace")
    headers = [(b"content-type", result.content_type.encode()), *ctx.headers]
    await send_bytes(send, result.status, result.body, headers)
    rec.ttft_s = perf_counter() - ctx.started_at


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
