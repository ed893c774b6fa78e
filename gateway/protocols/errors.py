"""Error shapes of the three APIs, and the neutral `Error` read from them.

OpenAI (Chat and Responses) writes `{"error": {"message", "type", "param", "code"}}`;
Anthropic writes `{"type": "error", "error": {"type", "message"}}` and gives each status
its own type, which its SDK turns into an exception class. Mid-stream errors carry no
status of their own: it is derived from the error's type, so that an error crosses from
one API to the other with the same meaning (an Anthropic `overloaded_error` reaches an
OpenAI client as a 529 `api_error`, an OpenAI `rate_limit_error` an Anthropic client as a
`rate_limit_error`).

Deliberately not here: the gateway's own error tree (`gateway.errors`), which the edge
renders; `anthropic_error_body` renders one of those for a Messages client.
"""

from __future__ import annotations

from typing import Any

from gateway.protocols.events import Error

ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_ANTHROPIC_STATUS = {kind: status for status, kind in ANTHROPIC_TYPES.items()}

_OPENAI_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "rate_limit_error": 429,
    "insufficient_quota": 429,
    "server_error": 500,
    "api_error": 500,
}


def anthropic_type(status: int) -> str:
    """Anthropic's error type for an HTTP status (a 4xx it has no name for is invalid)."""
    kind = ANTHROPIC_TYPES.get(status)
    if kind is not None:
        return kind
    if status == 503:
        return "overloaded_error"
    return "api_error" if status >= 500 else "invalid_request_error"


def openai_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 404:
        return "not_found_error"
    return "api_error" if status >= 500 else "invalid_request_error"


def anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    """The body (and the payload of `event: error`) Anthropic sends for `status`."""
    return {"type": "error", "error": {"type": anthropic_type(status), "message": message}}


def openai_error_body(
    status: int, message: str, *, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {
        "error": {"message": message, "type": openai_type(status), "param": param, "code": code}
    }


def error_from_anthropic(payload: Any, status: int | None = None) -> Error:
    """An Anthropic error body or `error` event payload as a neutral `Error`."""
    error = payload.get("error") if isinstance(payload, dict) else None
    error = error if isinstance(error, dict) else {}
    kind = error.get("type")
    message = error.get("message")
    if status is None:
        status = _ANTHROPIC_STATUS.get(kind, 500) if isinstance(kind, str) else 500
    if not isinstance(message, str) or not message:
        message = kind if isinstance(kind, str) and kind else "the upstream failed"
    return Error(status, message)


def error_from_openai(payload: Any, status: int | None = None) -> Error:
    """An OpenAI error body (`{"error": {...}}`, mid-stream or not) as a neutral `Error`."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, str):
        error = {"message": error}
    error = error if isinstance(error, dict) else {}
    kind, code, message = error.get("type"), error.get("code"), error.get("message")
    if status is None:
        status = _OPENAI_STATUS.get(kind, 500) if isinstance(kind, str) else 500
        if code in ("rate_limit_exceeded", "insufficient_quota"):
            status = 429
    if not isinstance(message, str) or not message:
        message = "the upstream failed"
    return Error(status, message, code if isinstance(code, str) else None)


def malformed(api: str, what: str) -> Error:
    """The upstream broke its own API's format: a 502, as any garbage from upstream is."""
    return Error(502, f"the upstream's {api} stream sent {what}", "upstream_error")
