"""The provider seam: one small Protocol, one module per provider.

A provider turns an `UpstreamCall` (the client's OpenAI-shaped request, already validated)
into either an `EventStream` (streaming) or a `Completion` (not), speaking whatever the
upstream speaks. Everything the client sees is OpenAI's format; a provider whose upstream
speaks something else translates (see `anthropic`).

The transports' exceptions (httpx's, whichever transport) are translated into `gateway.errors`
here, in one place (`upstream_errors`), the way httpx maps httpcore's: nothing above this layer
catches an httpx exception, and no message carries a URL with credentials or a header.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import httpx
import orjson

from gateway.config import ModelConfig, ProviderConfig
from gateway.errors import GatewayError, UpstreamError, UpstreamRejected, UpstreamTimeout
from gateway.protocols import Api
from gateway.transports import MalformedResponse

Route = Literal["chat.completions", "completions", "embeddings"]


@dataclass(slots=True)
class UpstreamCall:
    """One attempt's request. Treat as immutable (make a changed copy with `replace`): it
    is not frozen only because a frozen dataclass sets each field through
    `object.__setattr__`, 2.3 µs of its 2.7 on every request."""

    route: Route
    body: dict[str, Any]
    """The client's JSON body as parsed; providers copy before changing it."""
    model: ModelConfig
    """The model being tried (a fallback's when falling back)."""
    stream: bool
    include_usage: bool
    """The client asked for the usage-only chunk (`stream_options.include_usage`)."""
    request_id: str
    api: Api = "chat"
    """The API the client speaks (the body's shape, and the answer's): a provider relays
    its upstream's bytes when that is the upstream's API too, else translates
    (`gateway.protocols`). `route` is `chat.completions` for all three."""
    passed_headers: tuple[tuple[str, str], ...] = ()
    """Client headers an upstream of the client's own API takes as they came
    (`anthropic-version`, `anthropic-beta`)."""
    traceparent: str = ""
    """The W3C `traceparent` naming this attempt's span, when the request is traced."""


@dataclass
class Usage:
    prompt_tokens: int = 0
    """Every input token, cached ones included (Anthropic's cache reads and writes too)."""
    completion_tokens: int = 0
    """Every output token, reasoning included."""
    cached_tokens: int = 0
    """Input read from the provider's prompt cache (priced as cached input)."""
    cache_write_tokens: int = 0
    """Input written to Anthropic's prompt cache (priced as a cache write)."""
    reasoning_tokens: int = 0
    """Of the output, the model's reasoning (already in completion_tokens)."""


@dataclass(init=False)
class StreamState:
    """What a stream learned on its way through; read by the relay at the end."""

    usage: Usage | None = None
    """From the provider's own usage report; None if the stream ended before it."""
    finished: bool = False
    """A finish reason (or `[DONE]`) arrived: the answer is whole."""
    done_sent: bool = False
    """`data: [DONE]` was already part of the relayed bytes."""
    finish_reason: str = ""
    """The upstream's finish (stop) reason as it came, when the provider reads one."""
    completion_estimate: int = 0
    """Content-bearing deltas relayed so far: the charge when no usage arrives."""
    text: list[str] = field(default_factory=list)
    """Relayed text, kept only when `log_bodies` asks for it."""
    scrub: Callable[[str], str] | None = None
    """Takes the provider's credentials out of the kept text (`redact.Redactor`)."""
    end_event: Callable[[], bytes] | None = None
    """The client's end of a whole answer whose upstream stream ended without its own end
    event; None: Chat's `data: [DONE]`."""
    error_event: Callable[[GatewayError], bytes] | None = None
    """The client's error event for a failure after the first byte, in its API's shape
    (b"" when the stream already ended); None: Chat's `data: {"error": ...}`."""
    upstream_headers: Mapping[str, str] | None = None
    """The upstream response's headers (the router reads `x-ratelimit-*` from them)."""
    over: bool = False
    """Nothing more to relay and nothing to raise: the upstream body ended with the last
    read iterating took, and no error waits for the next one (set by the streams over the
    native transport; False for others). After the first event: a short answer came whole
    in it, with the body's end."""

    def __init__(self, scrub: Callable[[str], str] | None = None) -> None:
        # Made for every stream: only the fields without a class default are set, the others
        # read from the class until a stream sets them. The generated `__init__` set every
        # field, from a keyword argument's dict (~2.2k instructions more a stream, callgrind).
        self.text = []
        self.scrub = scrub

    def kept_text(self) -> str:
        """The relayed text for the request log, whole, so a secret the model spelt out
        over several deltas is caught too."""
        text = "".join(self.text)
        return self.scrub(text) if self.scrub is not None else text


class Sink(Protocol):
    """Where a pushed stream delivers (`EventStream.push`): called from the upstream
    connection's callbacks, not from a task, so none of these may block or raise."""

    ready: bool
    """False while the sink cannot take more (a send to the client is waiting). It turns
    False only in `relay` or `end` (a stream checks it after each `relay`, not before), and
    True again only before the relay calls the stream's `resume_push`."""

    def relay(self, data: bytes) -> None:
        """Bytes for the client: whole SSE events, as `__anext__` would have returned them."""

    def end(self, error: Exception | None, last: bytes = b"") -> None:
        """The stream ended (None) or failed (a GatewayError; anything else is a gateway
        bug, raised in the request's task all the same); nothing is delivered after this.
        `last`: the client's bytes of the read that ended the stream, not relayed: they go
        out with the response's end, in one write to the client instead of two."""


class EventStream(Protocol):
    """An open upstream stream. Iterating yields bytes ready for the client: one or more
    whole SSE events per upstream read, in order, never an empty chunk. Raises a
    `GatewayError` for an upstream failure (error event, malformed bytes, broken
    connection). Ends when the upstream body ends."""

    state: StreamState

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def __anext__(self) -> bytes: ...

    def push(self, sink: Sink) -> bool:
        """Deliver the rest of the stream to `sink` as it arrives, with no task wakeup per
        read; False if this stream cannot (then iterate it as before)."""

    def resume_push(self) -> None:
        """The sink is ready again: deliver what arrived meanwhile."""

    async def aclose(self) -> None:
        """Close the upstream response (and its connection, if not read to the end)."""


@dataclass
class Completion:
    """A non-streaming answer, OpenAI-shaped."""

    body: bytes
    usage: Usage | None
    status: int = 200
    content_type: str = "application/json"
    upstream_headers: Mapping[str, str] | None = None
    """The upstream answer's headers, when the provider kept them (`x-ratelimit-*`)."""


class Provider(Protocol):
    config: ProviderConfig

    async def open_stream(self, call: UpstreamCall) -> EventStream:
        """Send the request and return once the upstream answered 200 with a stream.
        Raises UpstreamError (retryable or not) or UpstreamRejected otherwise."""

    async def complete(self, call: UpstreamCall) -> Completion:
        """Send a non-streaming request and return the OpenAI-shaped answer."""

    async def aclose(self) -> None: ...


# --- translating upstream failures, in one place --------------------------------------------


@contextlib.contextmanager
def upstream_errors(provider: str) -> Iterator[None]:
    """Map the transport's exceptions (httpx's, whichever transport: see
    `gateway.transports`) to the gateway's own tree. Messages name the provider, never its
    URL (which may carry credentials) or any header."""
    try:
        yield
    except GatewayError:
        raise
    except httpx.HTTPError as exc:
        raise translate_error(provider, exc) from None


def translate_error(provider: str, exc: httpx.HTTPError) -> UpstreamError:
    """The gateway's error for a transport's exception (`upstream_errors`, for code that
    maps without the `with`)."""
    name = type(exc).__name__
    if isinstance(exc, httpx.ProxyError):
        # The transports' own messages name the proxy; this one does not.
        return UpstreamError(
            f"provider {provider!r} is unreachable through the egress proxy ({name}); "
            "check HTTPS_PROXY / HTTP_PROXY / NO_PROXY",
            kind="proxy",
            retryable=True,
        )
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(
            f"provider {provider!r} timed out ({name})",
            kind="connect_timeout" if isinstance(exc, httpx.ConnectTimeout) else "timeout",
            retryable=True,
        )
    if isinstance(exc, MalformedResponse):  # before the RemoteProtocolError it is too
        return UpstreamError(
            f"provider {provider!r} sent a malformed HTTP response ({name})",
            kind="malformed",
            retryable=True,
        )
    if isinstance(exc, httpx.ConnectError | httpx.RemoteProtocolError | httpx.ReadError):
        return UpstreamError(
            f"provider {provider!r} is unreachable or dropped the connection ({name})",
            kind="connect" if isinstance(exc, httpx.ConnectError) else "connection",
            retryable=True,
        )
    return UpstreamError(f"provider {provider!r} failed ({name})", kind="transport")


_ROUTING_HEADERS = ("retry-after", "retry-after-ms")


def error_from_status(
    provider: str, status: int, body: bytes, headers: Mapping[str, str] | None = None
) -> GatewayError:
    """The gateway error for a non-2xx upstream answer (OpenAI-compatible error bodies).

    4xx the client caused (bad parameter, context too long) pass through with the upstream's
    own message; the provider rejecting *our* credentials is a gateway fault (502), never
    shown as the client's 401; 429 and 5xx are retryable and become 429 / 502 / 503. The
    answer's `retry-after` and `x-ratelimit-*` headers ride on the error for the router.
    """
    error = _error_from_status(provider, status, body)
    if headers:
        kept = {
            k: v
            for k, v in headers.items()
            if k.lower() in _ROUTING_HEADERS or k.lower().startswith("x-ratelimit-")
        }
        if kept:
            error.upstream_headers = {k.lower(): v for k, v in kept.items()}
    return error


def _error_from_status(provider: str, status: int, body: bytes) -> GatewayError:
    message, shaped = _read_error(body)
    if status in (401, 403):
        return UpstreamError(
            f"provider {provider!r} rejected the gateway's credentials ({status}); "
            "check its api_key in the gateway config",
            kind="auth",
        )
    if 400 <= status < 500:
        limited = status == 429
        fallback = "is rate limiting the gateway" if limited else f"refused the request ({status})"
        return UpstreamRejected(
            message or f"provider {provider!r} {fallback}",
            status=status,
            raw=body if shaped else None,
            headers={"retry-after": "1"} if limited else None,
        )
    code = 503 if status in (503, 529) else 502
    return UpstreamError(
        f"provider {provider!r} answered {status}" + (f": {message}" if message else ""),
        kind=f"http_{status // 100}xx",
        retryable=True,
        status=code,
    )


def _read_error(body: bytes) -> tuple[str, bool]:
    """The error body's message, and whether it is already OpenAI's shape (then it is
    passed on as it came)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "", False
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return str(err["message"])[:500], "type" in err
    if isinstance(err, str):
        return err[:500], False
    return "", False
