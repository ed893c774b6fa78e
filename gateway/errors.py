"""The gateway's error tree and OpenAI's error shape.

Every failure a client can see is a `GatewayError`: it knows its HTTP status, OpenAI's
`type` and `code`, and renders the body OpenAI's SDKs parse into the matching exception
class. Before the response starts it becomes a status code; after, an SSE error event.

Messages are written for the person reading them and never carry a secret: upstream
exceptions are translated at the upstream boundary (`gateway.providers.base`), not
stringified here.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal

import orjson

Outcome = Literal[
    "completed",
    "client_cancelled",
    "upstream_error",
    "truncated",
    "idle_timeout",
    "rate_limited",
    "slow_client",
    "shutdown",
    "rejected",
]
"""How a request ended. The first six are the stream outcomes of README's "Streaming
semantics"; `slow_client` (the client read too slowly, its buffer passed the high-water
mark), `shutdown` (the grace period after SIGTERM ran out) are the gateway's own; `rejected`
is a request refused before any upstream call (bad key, bad input, unknown model)."""


class GatewayError(Exception):
    status: int = 500
    type: str = "api_error"
    code: str | None = None
    outcome: Outcome = "upstream_error"
    upstream_headers: Mapping[str, str] = MappingProxyType({})
    """An upstream's answer that became this error: its headers the router reads
    (`retry-after`, `x-ratelimit-*`); never sent to the client."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def json(self) -> bytes:
        return orjson.dumps(self.body())

    def sse(self) -> bytes:
        """The error as the last event of a stream that already started."""
        return b"data: " + self.json() + b"\n\n"


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    outcome: Outcome = "rejected"


class InvalidApiKey(InvalidRequest):
    status = 401
    code = "invalid_api_key"


class ModelNotFound(InvalidRequest):
    status = 404
    code = "model_not_found"


class ModelNotAllowed(ModelNotFound):
    status = 403


class PayloadTooLarge(InvalidRequest):
    status = 413
    code = "request_too_large"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    outcome: Outcome = "rate_limited"


class QuotaExceeded(RateLimited):
    code = "insufficient_quota"


class UpstreamError(GatewayError):
    """The provider failed: unreachable, 5xx, garbage, or an error event mid-stream."""

    status = 502
    type = "api_error"
    code = "upstream_error"
    outcome: Outcome = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        kind: str = "http_error",
        retryable: bool = False,
        **kwargs: object,
    ) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.kind = kind
        """Bounded label for gateway_upstream_errors_total: connect, timeout, http_5xx, ..."""
        self.retryable = retryable


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamRejected(GatewayError):
    """The provider answered 4xx to a request it understood: passed on as it came.

    `raw` holds the provider's error body when it is already OpenAI-shaped, so the client
    sees the provider's own words (as it would calling the provider directly).
    """

    type = "invalid_request_error"
    outcome: Outcome = "upstream_error"

    def __init__(self, message: str, *, status: int, raw: bytes | None = None, **kw: object):
        super().__init__(message, status=status, **kw)  # type: ignore[arg-type]
        self.raw = raw
        if status == 429:
            self.type, self.code, self.outcome = (
                "rate_limit_error",
                "rate_limit_exceeded",
                "rate_limited",
            )

    def json(self) -> bytes:
        return self.raw if self.raw is not None else super().json()


class ServiceUnavailable(GatewayError):
    status = 503
    type = "api_error"
    code = "service_unavailable"
    outcome: Outcome = "rejected"


class StreamEnded(GatewayError):
    """A stream the gateway itself had to end: idle timeout, slow client, shutdown."""

    status = 504
    type = "api_error"

    def __init__(self, message: str, *, outcome: Outcome, code: str) -> None:
        super().__init__(message, code=code)
        self.outcome = outcome
