"""An upstream SSE response as an `EventStream`: read, frame, translate, hand on.

`SSEUpstream` owns the upstream response (an `httpx.Response`, or over the native transport
its `NativeResponse`, read the same way): it reads raw network chunks, frames them
into events with `SSEDecoder`, and asks its subclass to `translate` each batch of events
into bytes for the client. Reads that complete no event yield nothing (no empty writes).
The relay either iterates it (a task wakeup per read) or, when the response came over the
native transport, has it push each read to a `Sink` from the connection's own callback
(`push`: the connection hands each read's bytes to `_pushed`; `resume_push` takes what
waited while the sink was not ready); both go through `_client_bytes`, so they relay the
same bytes.

An error event in the middle of a batch is held back until the events before it were
handed on, so the client receives everything up to the failure, then the error.

Every read of the stream goes through the provider's `Redactor` here: the client's
bytes of each read and the message of an error raised while translating, so no credential
the gateway sent comes back out (see `gateway.providers.redact`).

Deliberately not here: sending the request and checking the answer before it is a stream
(`open_event_stream` in `gateway.providers.answers`, which also fetches non-streamed
answers).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from gateway.errors import GatewayError, UpstreamError
from gateway.protocols import Api, decoder, encoder
from gateway.protocols.errors import anthropic_error_body
from gateway.protocols.events import (
    DONE,
    Done,
    Error,
    Event,
    Finish,
    ReasoningDelta,
    Start,
    TextDelta,
    TokenUsage,
    ToolArgsDelta,
)
from gateway.protocols.events import Usage as NeutralUsage
from gateway.providers.base import Sink, StreamState, Usage, upstream_errors
from gateway.providers.redact import Redactor
from gateway.sse import SSEDecoder, SSEError, SSEEvent
from gateway.transports.native import NativeBody, NativeResponse


class SSEUpstream:
    """Base for providers whose upstream speaks SSE; subclasses implement `translate`."""

    # Read from the class until a stream sets them (most streams never do): two stores
    # fewer in the `__init__` every stream runs.
    _pending_error: GatewayError | None = None
    _sink: Sink | None = None

    def __init__(
        self,
        response: httpx.Response | NativeResponse,
        provider: str,
        include_usage: bool,
        keep_text: bool = False,
        max_event_bytes: int = 1024 * 1024,
        redact: Redactor | None = None,
    ) -> None:
        self.provider = provider
        self._redact = redact = redact if redact is not None else Redactor([])
        # Its `scrub_text` even when it holds no secret (the text then comes back as it is):
        # asking would call `Redactor.__bool__`, a method in Python, for every stream.
        self.state = state = StreamState(redact.scrub_text)
        state.upstream_headers = response.headers
        self.include_usage = include_usage
        self.keep_text = keep_text
        self._response = response
        # The response's own byte stream rather than `aiter_raw()`: that wrapper adds an
        # async generator and a re-chunker per read and does nothing a relay needs (the
        # stream is closed by `aclose`, and the bytes are counted by nobody).
        stream = response.stream
        raw: AsyncIterator[bytes]
        if isinstance(stream, NativeBody):
            # Its own iterator, taken without its `__aiter__` (a method in Python, ~800
            # instructions a stream).
            body = raw = stream
        elif isinstance(stream, httpx.AsyncByteStream):
            body, raw = None, stream.__aiter__()
        else:
            raise TypeError("an upstream stream needs an async httpx response")
        self._raw = raw
        self._decoder = SSEDecoder(max_event_bytes)
        self._body = body
        """The native transport's body, read without waiting when bytes are there."""
        self._native = body is not None and type(response) is NativeResponse
        """The answer is the native transport's own (not an `httpx.Response`): closing it is
        closing its body (`aclose`)."""

    def __aiter__(self) -> SSEUpstream:
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self._pending_error is not None:
                error, self._pending_error = self._pending_error, None
                raise error
            try:
                # Over the native transport, what already arrived is taken without the body's
                # own `__anext__` coroutine: a stream's first read usually came with the head.
                chunk = self._body.read_nowait() if self._body is not None else b""
                if not chunk:
                    chunk = await self._raw.__anext__()
            except httpx.HTTPError:
                # Mapped here rather than under a `with` around the read: a context manager
                # per read costs more than the read's own bookkeeping.
                with upstream_errors(self.provider):
                    raise
            data = self._client_bytes(chunk)
            if data is not None:
                if self._body is not None:  # the relay asks after the first event
                    self.state.over = self._body.took_last and self._pending_error is None
                return data

    def push(self, sink: Sink) -> bool:
        """Hand the rest of the stream to `sink` from the connection's own callbacks (native
        transport only; False: keep iterating)."""
        body = self._body
        if body is None or self._pending_error is not None:
            return False
        self._sink = sink
        self.resume_push()
        return True

    def resume_push(self) -> None:
        """Relay what arrived, for as long as the sink is ready (it stops being ready while
        a send to the client waits; the relay calls this again once the send is done); once
        nothing waits unread, have the body hand each read to `_pushed` as it arrives."""
        sink, body = self._sink, self._body
        if sink is None or body is None:
            return
        try:
            while self._sink is sink and sink.ready:
                try:
                    chunk = body.read_nowait()
                except httpx.HTTPError:
                    with upstream_errors(self.provider):
                        raise
                if chunk is None:
                    self._end(sink, self._pending_error)
                    return
                if not chunk:
                    body.listen(self._pushed)
                    return
                self._pushed(chunk, body.took_last)
        except Exception as exc:  # a GatewayError, or a bug: the relay's task raises it
            self._end(sink, exc)

    def _pushed(self, chunk: bytes, last: bool) -> None:
        """One read's bytes to the sink (`last`: the body ended with them): the body's
        listener, and what `resume_push` does with each read it takes. From the body, b""
        says the body ended or failed with no more bytes; `read_nowait` says which."""
        sink = self._sink
        if sink is None:
            return  # ended: `_end` unset the listener, so only a stray call gets here
        if not chunk:
            self.resume_push()
            return
        try:
            data = self._client_bytes(chunk)
            if data is not None:
                if self._pending_error is None:
                    if last:
                        self._end(sink, None, data)  # one write with the response's end
                    else:
                        sink.relay(data)
                        if not sink.ready and self._body is not None:
                            # What arrives now waits in the connection (up to its high-water
                            # mark) for `resume_push`, which the relay calls once it is ready.
                            self._body.listen(None)
                    return
                sink.relay(data)
            if self._pending_error is not None:
                self._end(sink, self._pending_error)
            elif last:
                self._end(sink, None)  # the end came with bytes that completed no event
        except Exception as exc:  # a GatewayError, or a bug: the relay's task raises it
            self._end(sink, exc)

    def _end(self, sink: Sink, error: Exception | None, last: bytes = b"") -> None:
        self._sink = None
        self._pending_error = None
        if self._body is not None:
            self._body.listen(None)
        sink.end(error, last)

    def _client_bytes(self, chunk: bytes) -> bytes | None:
        """The client's bytes for one upstream read; None when it completed no event that
        is sent. An error after some events is kept in `_pending_error` for the next read."""
        try:
            events = self._decoder.feed(chunk)
        except SSEError as exc:
            raise UpstreamError(
                f"provider {self.provider!r} sent malformed SSE: {exc}", kind="malformed"
            ) from None
        if not events:
            return None
        out: list[bytes] = []
        try:
            self.translate(events, out)
        except GatewayError as exc:
            self._hold_error(exc, bool(out))
        if not out:
            return None
        # One scan per form of each secret: the events are whole, so no secret is split
        # between this read's bytes and the next's.
        return self._redact.scrub(b"".join(out) if len(out) > 1 else out[0])

    def _hold_error(self, exc: GatewayError, relayed: bool) -> None:
        """An upstream failure met within a read: raised at once when nothing of the read
        goes out before it, else kept in `_pending_error` for the next read. Its message is
        the upstream's own words, which go to the client and the log: scrubbed first."""
        message = self._redact.scrub_text(exc.message)
        if message is not exc.message:
            exc.message, exc.args = message, (message,)
        if not relayed:
            raise exc
        self._pending_error = exc

    def translate(self, events: list[SSEEvent], out: list[bytes]) -> None:
        """Append the client's bytes for one read's events to `out`; raise a GatewayError
        on an upstream failure (what `out` holds by then is still sent, then the error)."""
        raise NotImplementedError

    async def aclose(self) -> None:
        self._sink = None
        if self._native:
            # What `NativeResponse.aclose` does, without its coroutine and the body's.
            self._body.close()  # type: ignore[union-attr]  # set with `_native`
        else:
            await self._response.aclose()


# --- streams of the Responses and Messages APIs ------------------------------------------------

_COUNTED = frozenset({TextDelta, ReasoningDelta, ToolArgsDelta})
_RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504, 529})


class TranslatedStream(SSEUpstream):
    """An upstream stream of one API relayed to a client of another (`gateway.protocols`):
    each upstream event decoded to neutral events, each of those encoded in the client's API.

    The stream state is read off the neutral events (usage, the end, the relayed text).
    An upstream error event is raised, not encoded: before the first byte it is then a
    retry or the client's HTTP error; after it, the relay asks `error_event` for the
    client's own failure event (`response.failed`, `event: error`), which the encoder
    writes after closing what was open.
    """

    def __init__(
        self,
        response: httpx.Response | NativeResponse,
        provider: str,
        *,
        upstream: Api,
        client: Api,
        request: dict[str, Any] | None = None,
        keep_text: bool = False,
        max_event_bytes: int = 1024 * 1024,
        redact: Redactor | None = None,
    ) -> None:
        super().__init__(
            response,
            provider,
            include_usage=False,
            keep_text=keep_text,
            max_event_bytes=max_event_bytes,
            redact=redact,
        )
        self._decode = decoder(upstream).decode
        self._encode = encoder(client, request=request).encode
        self._ended = False
        self._upstream_error: Error | None = None
        self.state.end_event = self._end_event
        self.state.error_event = self._error_event

    def translate(self, events: list[SSEEvent], out: list[bytes]) -> None:
        if self._ended:
            return  # an upstream that talks after its end is not relayed further
        decode, encode, state = self._decode, self._encode, self.state
        neutral: list[Event] = []
        for event in events:
            if event.data:
                decode(event.data, neutral)
        for item in neutral:
            kind = type(item)
            if kind in _COUNTED:
                state.completion_estimate += 1
                if self.keep_text and kind is TextDelta:
                    state.text.append(item[1])  # type: ignore[misc]
            elif kind is NeutralUsage:
                assert isinstance(item, NeutralUsage)
                usage = item.usage
                state.usage = charged_usage(usage)
            elif kind is Start:
                _started(item, state)
            elif kind is Finish:
                state.finish_reason = item[0]  # type: ignore[misc,assignment]
            elif kind is Error:
                assert isinstance(item, Error)
                self._upstream_error = item
                raise upstream_error_event(self.provider, item)
            encode(item, out)
            if kind is Done:
                state.finished = state.done_sent = self._ended = True
                return

    def _end_event(self) -> bytes:
        if self._ended:
            return b""
        self._ended = self.state.done_sent = True
        out: list[bytes] = []
        self._encode(DONE, out)
        return b"".join(out)

    def _error_event(self, error: GatewayError) -> bytes:
        if self._ended:
            return b""
        self._ended = True
        neutral = self._upstream_error or Error(error.status, error.message, error.code)
        out: list[bytes] = []
        self._encode(neutral, out)
        return self._redact.scrub(b"".join(out))


_DELTAS: dict[Api, tuple[bytes, ...]] = {
    "messages": (b'{"type":"content_block_delta"',),
    "responses": (
        b'{"type":"response.output_text.delta"',
        b'{"type":"response.function_call_arguments.delta"',
        b'{"type":"response.reasoning_summary_text.delta"',
        b'{"type":"response.reasoning_text.delta"',
    ),
}
"""How each API's per-token events begin, as its servers write them: such an event says
nothing the relay reads but that a token came (no usage, end or error), so a pass-through
relays it without parsing it."""


class PassThroughStream(SSEUpstream):
    """An upstream stream of the client's own API (Messages to Messages, Responses to
    Responses): its events are relayed as its own bytes, and decoded only to learn usage,
    the end and errors; per-token deltas are recognised by their first bytes and not
    decoded at all (as the Chat pass-through does). An error event before anything was
    relayed is raised (a retry, or the client's HTTP error); after that it is relayed as
    it came, then raised."""

    def __init__(
        self,
        response: httpx.Response | NativeResponse,
        provider: str,
        *,
        api: Api,
        keep_text: bool = False,
        max_event_bytes: int = 1024 * 1024,
        redact: Redactor | None = None,
    ) -> None:
        super().__init__(
            response,
            provider,
            include_usage=False,
            keep_text=keep_text,
            max_event_bytes=max_event_bytes,
            redact=redact,
        )
        self._api = api
        self._deltas = () if keep_text else _DELTAS.get(api, ())
        self._decode = decoder(api).decode
        self._relayed = False
        self._ended = False
        self._sequence = -1
        self._start: Start | None = None
        """The upstream's own start (its response id and model), for a `response.failed`."""
        self.state.end_event = self._end_event
        self.state.error_event = self._error_event

    def _client_bytes(self, chunk: bytes) -> bytes | None:
        # The usual read when tokens are paced: exactly one two-line event (`event: NAME`,
        # `data: ...`) whose data begins as a per-token delta, nothing buffered before it.
        # Relayed as `translate` would relay it, without building the event and the lists.
        deltas = self._deltas
        if deltas and chunk.startswith(b"event: ") and chunk.endswith(b"\n\n"):
            end = chunk.find(b"\n")
            if (
                chunk.startswith(b"data: ", end + 1)
                and chunk.startswith(deltas, end + 7)
                and 10 not in chunk[end + 1 : -2]  # one data line (see gateway.sse)
                and 13 not in chunk  # no CR (an int: see gateway.sse)
                and chunk[7:end].isascii()  # the decoder refuses a name not in UTF-8
                and not self._ended
                and not self._decoder.pending
            ):
                self.state.completion_estimate += 1
                self._sequence += 1
                self._relayed = True
                return self._redact.scrub(chunk)
        return super()._client_bytes(chunk)

    def translate(self, events: list[SSEEvent], out: list[bytes]) -> None:
        if self._ended:
            return
        decode, state, deltas = self._decode, self.state, self._deltas
        neutral: list[Event] = []
        for event in events:
            data = event.data
            if not data:
                continue
            if deltas and data.startswith(deltas):
                state.completion_estimate += 1
                self._sequence += 1
                out.append(event.raw if event.raw.endswith(b"\n\n") else event.raw + b"\n\n")
                continue
            neutral.clear()
            decode(data, neutral)
            for item in neutral:
                kind = type(item)
                if kind in _COUNTED:
                    state.completion_estimate += 1
                    if self.keep_text and kind is TextDelta:
                        state.text.append(item[1])  # type: ignore[misc]
                elif kind is NeutralUsage:
                    assert isinstance(item, NeutralUsage)
                    usage = item.usage
                    state.usage = charged_usage(usage)
                elif kind is Start:
                    assert isinstance(item, Start)
                    self._start = item
                    _started(item, state)
                elif kind is Finish:
                    state.finish_reason = item[0]  # type: ignore[misc,assignment]
                elif kind is Done:
                    state.finished = state.done_sent = self._ended = True
                elif kind is Error:
                    assert isinstance(item, Error)
                    if self._relayed or out:
                        out.append(event.raw)
                        self._ended = True
                    raise upstream_error_event(self.provider, item)
            self._sequence += 1
            out.append(event.raw if event.raw.endswith(b"\n\n") else event.raw + b"\n\n")
            if self._ended:
                break
        if out:
            self._relayed = True

    def _end_event(self) -> bytes:
        # The answer was whole (its finish seen) but the upstream did not send its end
        # event: nothing of the client's API can be made up without its state; the client's
        # SDK sees the stream end after the finish.
        self._ended = self.state.done_sent = True
        return b""

    def _error_event(self, error: GatewayError) -> bytes:
        if self._ended:
            return b""
        self._ended = True
        if self._api == "messages":
            body = anthropic_error_body(error.status, error.message)
            return b"event: error\ndata: " + orjson.dumps(body) + b"\n\n"
        start = self._start
        if start is None:  # nothing said which response this is: the API's bare error event
            body = {
                "type": "error",
                "code": error.code,
                "message": error.message,
                "param": None,
                "sequence_number": self._sequence + 1,
            }
            return b"event: error\ndata: " + orjson.dumps(body) + b"\n\n"
        # The upstream's response, failed: its items still open stay as they were (their
        # state is the upstream's, not read here); the client's SDK sees the failure.
        code = "rate_limit_exceeded" if error.status == 429 else "server_error"
        response = {
            "id": start.id,
            "object": "response",
            "created_at": int(time.time()),
            "status": "failed",
            "model": start.model,
            "output": [],
            "error": {"code": code, "message": error.message},
            "incomplete_details": None,
            "usage": None,
        }
        failed = {
            "type": "response.failed",
            "sequence_number": self._sequence + 1,
            "response": response,
        }
        return b"event: response.failed\ndata: " + orjson.dumps(failed) + b"\n\n"


def charged_usage(usage: TokenUsage) -> Usage:
    """A neutral usage report as what the key is charged (cache and reasoning counts too,
    which prices tell apart)."""
    return Usage(
        usage.input_tokens,
        usage.output_tokens,
        cached_tokens=usage.cached_input_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        reasoning_tokens=usage.reasoning_tokens,
    )


def _started(start: Event, state: StreamState) -> None:
    """Usage known at the start (Anthropic's input tokens): what a stream cut short before
    its final usage is charged for its prompt, instead of the gateway's estimate."""
    assert isinstance(start, Start)
    if start.usage is not None:
        state.usage = charged_usage(start.usage)


def upstream_error_event(provider: str, error: Error) -> UpstreamError:
    """An upstream's error event (any API) as the gateway's error; transient ones may be
    retried while nothing reached the client."""
    return UpstreamError(
        f"provider {provider!r} failed mid-stream: {error.message[:500]}",
        kind="error_event",
        retryable=error.status in _RETRYABLE_STATUSES,
    )
