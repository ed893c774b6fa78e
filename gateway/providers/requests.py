"""How a provider builds its upstream requests: `httpx.Request`s, headers made once per URL.

The providers' tool, not a transport's: it decides what every provider sends (httpx's
default headers, the provider's own, the config's, the credentials) and the timeouts each
kind of request carries; the transport (`gateway.transports`) only sends it.
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from gateway.config import ProviderConfig, Timeouts

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


class UpstreamRequests:
    """How a provider builds its upstream requests: headers encoded and timeouts made once.

    Header order decides who wins: the defaults, then the provider's own (`defaults`, e.g.
    an API version a config may pin differently), then the config's `headers`, then
    `auth` (the configured key). Streams ask for SSE, unencoded; plain calls take JSON.
    Streams are timed by the relay (first token, idle, total); a plain call by httpx.
    """

    def __init__(
        self,
        config: ProviderConfig,
        timeouts: Timeouts,
        *,
        defaults: Mapping[str, str] | None = None,
        auth: Mapping[str, str] | None = None,
    ) -> None:
        layers = [_DEFAULT_HEADERS, _JSON, defaults or {}, config.headers, auth or {}]
        # Names are case-insensitive: a config's "Authorization" replaces the default one.
        self._headers = {name.lower(): value for layer in layers for name, value in layer.items()}
        self._stream_timeout = httpx.Timeout(timeouts.connect, read=None).as_dict()
        self._call_timeout = httpx.Timeout(timeouts.connect, read=timeouts.first_token).as_dict()
        self._cache: dict[tuple[httpx.URL, bool], httpx.Headers] = {}

    def build(
        self, url: httpx.URL, content: bytes, *, stream: bool, traceparent: str = ""
    ) -> httpx.Request:
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
        request = httpx.Request(
            "POST",
            url,
            headers=headers,
            stream=httpx.ByteStream(content),
            extensions={"timeout": self._stream_timeout if stream else self._call_timeout},
        )
        request.headers["content-length"] = str(len(content))
        if traceparent:  # a traced request: the attempt's span is the upstream's parent
            request.headers["traceparent"] = traceparent
        return request

    def _headers_for(self, url: httpx.URL, stream: bool) -> httpx.Headers:
        headers = {"host": url.netloc.decode("ascii"), **self._headers}  # a config's own wins
        if stream:
            headers |= {"accept": "text/event-stream", "accept-encoding": "identity"}
        return httpx.Headers(headers)
