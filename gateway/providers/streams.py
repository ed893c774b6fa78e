"""An upstream SSE response as an `EventStream`: read, frame, translate, hand on.

`SSEUpstream` owns the upstream `httpx.Response`: it reads raw network chunks, frames them
into events with `SSEDecoder`, and asks its subclass to `translate` each batch of events
into bytes for the client. Reads that complete no event yield nothing (no empty writes).

An error event in the middle of a batch is held back until the events before it were
handed on, so the client receives everything up to the failure, then the error.
"""

from __future__ import annotations

import aiohttp
import httpx

from gateway.errors import GatewayError, UpstreamError
from gateway.providers.base import StreamState, upstream_errors
from gateway.relay.sse import SSEDecoder, SSEError, SSEEvent


class SSEUpstream:
    """Base for providers whose upstream speaks SSE; subclasses implement `translate`."""

    def __init__(
        self,
        response: httpx.Response,
        provider: str,
        *,
        include_usage: bool,
        keep_text: bool = False,
        max_event_bytes: int = 1024 * 1024,
    ) -> None:
        self.state = StreamState()
        self.provider = provider
        self.include_usage = include_usage
        self.keep_text = keep_text
        self._response = response
        # The response's own byte stream rather than `aiter_raw()`: that wrapper adds an
        # async generator and a re-chunker per read and does nothing a relay needs (the
        # stream is closed by `aclose`, and the bytes are counted by nobody).
        stream = response.stream
        if not isinstance(stream, httpx.AsyncByteStream):
            raise TypeError("an upstream stream needs an async httpx response")
        self._raw = stream.__aiter__()
        self._decoder = SSEDecoder(max_event_bytes)
        self._pending_error: GatewayError | None = None

    def __aiter__(self) -> SSEUpstream:
        return self

    async def __anext__(self) -> bytes:
        if self._pending_error is not None:
            error, self._pending_error = self._pending_error, None
            raise error
        while True:
            try:
                chunk = await self._raw.__anext__()
            except (httpx.HTTPError, aiohttp.ClientError):
                # Mapped here rather than under a `with` around the read: a context manager
                # per read costs more than the read's own bookkeeping.
                with upstream_errors(self.provider):
                    raise
            try:
                events = self._decoder.feed(chunk)
            except SSEError as exc:
                raise UpstreamError(
                    f"provider {self.provider!r} sent malformed SSE: {exc}", kind="malformed"
                ) from None
            if not events:
                continue
            out: list[bytes] = []
            try:
                self.translate(events, out)
            except GatewayError as exc:
                if not out:
                    raise
                self._pending_error = exc
            if out:
                return b"".join(out) if len(out) > 1 else out[0]

    def translate(self, events: list[SSEEvent], out: list[bytes]) -> None:
        """Append the client's bytes for one read's events to `out`; raise a GatewayError
        on an upstream failure (what `out` holds by then is still sent, then the error)."""
        raise NotImplementedError

    async def aclose(self) -> None:
        await self._response.aclose()


def malformed(provider: str, what: str) -> UpstreamError:
    return UpstreamError(f"provider {provider!r} sent {what}", kind="malformed")
