"""How a provider builds its upstream requests: headers made once per URL.

The providers' tool, not a transport's: it decides what every provider sends (httpx's
default headers, the provider's own, the config's, the credentials) and the timeouts each
kind of request carries; the transport (`gateway.transports`) only sends it.

Requests are `httpx.Request`s, but for a stream over the native transport: that one is
written as bytes (`NativeRequest`), its head made once per URL (`Target`) with only the
body's length and the `traceparent` added per request, the same fields in the same order
as the `httpx.Request` would have sent. An `httpx.Request` costs more to build than to
send (its headers' object, the URL's, the body's stream), and it lived as long as the
stream did (the response kept it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import httpx

from gateway.config import ProviderConfig, Timeouts
from gateway.transports.http11 import Origin
from gateway.transports.native import NativeRequest, NativeTransport

_DEFAULT_HEADERS = {
    "accept": "*/*",
    "accept-encoding": "gzip, deflate",
    "connection": "keep-alive",
    "user-agent": f"python-httpx/{httpx.__version__}",
}
"""httpx.AsyncClient's default headers, set on every request here: left out, each
transport adds its own or none (aiohttp offers br and zstd when their libraries are
installed, which httpx may not decode)."""


_JSON = {"content-type": "application/json"}
_STREAM = {"accept": "text/event-stream", "accept-encoding": "identity"}


class Target:
    """One upstream URL, parsed, and what its streams' requests share: made once per URL
    by the provider (`UpstreamRequests.target`)."""

    __slots__ = ("head", "origin", "url")

    def __init__(self, url: httpx.URL, origin: Origin | None, head: bytes) -> None:
        self.url = url
        self.origin = origin
        """Where the native transport sends its streams' bytes; None: as `httpx.Request`s
        (another transport, or an http origin behind a proxy)."""
        self.head = head
        """A stream request's line and header fields, but its length (b"" without origin)."""


class UpstreamRequests:
    """How a provider builds its upstream requests: headers encoded and timeouts made once.

    Header order decides who wins: the defaults, then the provider's own (`defaults`, e.g.
    an API version a config may pin differently), then the config's `headers`, then
    `auth` (the configured key). Streams ask for SSE, unencoded; plain calls take JSON.
    Streams are timed by the relay (first token, idle, total); a plain call by httpx.
    Each request takes the timeouts of the model (deployment) it is for (`timeouts`; None:
    the gateway's, given here); those of a model with its own are made on its first call.
    """

    def __init__(
        self,
        config: ProviderConfig,
        timeouts: Timeouts,
        *,
        defaults: Mapping[str, str] | None = None,
        auth: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        layers = [_DEFAULT_HEADERS, _JSON, defaults or {}, config.headers, auth or {}]
        # Names are case-insensitive: a config's "Authorization" replaces the default one.
        self._headers = {name.lower(): value for layer in layers for name, value in layer.items()}
        self._timeouts = timeouts
        self._stream_timeout, self._call_timeout = _extensions(timeouts)
        self._others: dict[Timeouts, tuple[dict[str, float | None], dict[str, float | None]]] = {}
        """The timeout extensions of models with timeouts of their own."""
        self._cache: dict[tuple[httpx.URL, bool], httpx.Headers] = {}
        self._native = transport if isinstance(transport, NativeTransport) else None
        self._connect = timeouts.connect

    def target(self, url: str) -> Target:
        """`url` parsed (an invalid one raises httpx.InvalidURL), and, over the native
        transport, its streams' request head."""
        parsed = httpx.URL(url)
        origin = None if self._native is None else self._native.raw_origin(parsed)
        head = b"" if origin is None else _head(parsed, _ascii(self._fields(parsed, stream=True)))
        return Target(parsed, origin, head)

    def stream(
        self,
        target: Target,
        content: bytes,
        *,
        traceparent: str = "",
        extra: Iterable[tuple[str, str]] = (),
        timeouts: Timeouts | None = None,
    ) -> httpx.Request | NativeRequest:
        """A streaming request; `extra` fields replace the same-named ones (a client's own
        `anthropic-version`). In bytes when the native transport takes them (`Target`)."""
        if target.origin is None:
            return self.build(
                target.url,
                content,
                stream=True,
                traceparent=traceparent,
                extra=extra,
                timeouts=timeouts,
            )
        head = target.head
        if extra:
            fields = _ascii(self._fields(target.url, stream=True))
            # As `request.headers[name] = value` sets them: in UTF-8, where one of the same
            # name stood (httpx.Headers.__setitem__).
            fields.update((name.lower().encode(), value.encode()) for name, value in extra)
            head = _head(target.url, fields)
        trace = b"traceparent: %s\r\n" % traceparent.encode("ascii") if traceparent else b""
        data = b"".join((head, b"content-length: %d\r\n" % len(content), trace, b"\r\n", content))
        return NativeRequest(
            target.origin, data, self._connect if timeouts is None else timeouts.connect
        )

    def build(
        self,
        url: httpx.URL,
        content: bytes,
        *,
        stream: bool,
        traceparent: str = "",
        extra: Iterable[tuple[str, str]] = (),
        timeouts: Timeouts | None = None,
    ) -> httpx.Request:
        """An `httpx.Request`; `extra` fields replace the same-named ones, as in `stream`."""
        # `content=` would make httpx parse, encode and complete the headers on every
        # request (most of the cost of building one); a request given `stream=` takes its
        # headers as they are, so they are made whole here, once per URL, and only the
        # length is added. The body bytes are the same either way.
        headers = self._cache.get((url, stream))
        if headers is None:
            headers = self._cache[url, stream] = self._headers_for(url, stream)
        # The body lives as long as the stream (the response keeps its request). orjson's
        # `dumps` hands back bytes in a 4 KiB allocation whatever their length: held by
        # 3,000 open streams that was 12 MB, 15% of their memory (docs/performance.md,
        # "Thousands of streams"). A copy is exactly as long.
        content = bytes(memoryview(content))
        if timeouts is None or timeouts is self._timeouts:
            timeout = self._stream_timeout if stream else self._call_timeout
        else:
            own = self._others.get(timeouts)
            if own is None:
                own = self._others[timeouts] = _extensions(timeouts)
            timeout = own[0] if stream else own[1]
        request = httpx.Request(
            "POST",
            url,
            headers=headers,
            stream=httpx.ByteStream(content),
            extensions={"timeout": timeout},
        )
        request.headers["content-length"] = str(len(content))
        if traceparent:  # a traced request: the attempt's span is the upstream's parent
            request.headers["traceparent"] = traceparent
        for name, value in extra:
            request.headers[name] = value
        return request

    def _headers_for(self, url: httpx.URL, stream: bool) -> httpx.Headers:
        return httpx.Headers(self._fields(url, stream=stream))

    def _fields(self, url: httpx.URL, *, stream: bool) -> dict[str, str]:
        headers = {"host": url.netloc.decode("ascii"), **self._headers}  # a config's own wins
        if stream:
            headers |= _STREAM
        return headers


def _extensions(
    timeouts: Timeouts,
) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """The `timeout` extensions of a stream's request (no read timeout: the relay times it)
    and of a plain call's (its reads within the first-token timeout)."""
    stream = httpx.Timeout(timeouts.connect, read=None).as_dict()
    return stream, httpx.Timeout(timeouts.connect, read=timeouts.first_token).as_dict()


def _ascii(fields: Mapping[str, str]) -> dict[bytes, bytes]:
    """Fields encoded as `httpx.Headers(fields)` encodes them: in ASCII (a value outside it
    fails as it fails there)."""
    return {name.encode("ascii"): value.encode("ascii") for name, value in fields.items()}


def _head(url: httpx.URL, fields: Mapping[bytes, bytes]) -> bytes:
    """The request line and `fields`, without the blank line that ends the head."""
    lines = [b"POST %s HTTP/1.1\r\n" % url.raw_path]
    lines.extend(b"%s: %s\r\n" % pair for pair in fields.items())
    return b"".join(lines)
