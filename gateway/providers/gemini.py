"""Google Gemini through its OpenAI-compatible endpoint: the OpenAI provider, with Google's
error shape turned into OpenAI's.

`base_url` defaults to `https://generativelanguage.googleapis.com/v1beta/openai` (requests
go to `.../chat/completions`, `.../embeddings`), the key goes as `Authorization: Bearer`.
The request is sent as the client wrote it: parameters Gemini does not know are answered
by Gemini's own 400 naming them, and `reasoning_effort` is Gemini's to map to its thinking
settings (its accepted values differ by model).

What differs from OpenAI on the wire, and what is done about it:
- Errors arrive in Google's shape, often as a JSON list, `[{"error": {"code": 400,
  "message": "...", "status": "INVALID_ARGUMENT"}}]`, which the OpenAI SDK cannot read a
  message from. Error bodies (and an error event in a stream, in either shape) become
  OpenAI's `{"error": {"message", "type", "param", "code"}}`, `code` being Google's status
  in lower case and `type` following it (`invalid_request_error`, `rate_limit_error`, ...).
- Usage rides on the last chunk, beside its finish reason and often its last text, rather
  than in a chunk of its own: it is taken out of that chunk, and a client that asked for
  usage gets it as OpenAI sends it, in a `"choices": []` chunk after.
- A streamed tool call ends with `finish_reason: "stop"` (Google's issue
  googleapis/python-genai#2868; some plain answers too): after a tool call, `stop` is
  written `tool_calls`, as OpenAI's clients (agent loops) expect, before anything reads
  the chunk: a Responses or Messages client's translated stream then ends the same way as
  for a tool call (`response.completed` with the call, `stop_reason: "tool_use"`).
- A key Gemini does not accept is a 400 (`API key not valid`, reason `API_KEY_INVALID`):
  the gateway's credential, so like every provider's refusal of it, a 502 to the client.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.providers.base import error_from_status
from gateway.providers.openai import OpenAIProvider, OpenAIStream
from gateway.providers.streams import TranslatedStream
from gateway.sse import SSEEvent

_TYPES = {
    "RESOURCE_EXHAUSTED": "rate_limit_error",
    "UNAUTHENTICATED": "authentication_error",
    "PERMISSION_DENIED": "permission_error",
    "INTERNAL": "api_error",
    "UNAVAILABLE": "api_error",
    "DEADLINE_EXCEEDED": "api_error",
}
"""Google's error statuses whose OpenAI type is not `invalid_request_error`."""


def openai_error(data: Any) -> dict[str, Any] | None:
    """OpenAI's error object for a Google error document (a list of them, or one), None
    when `data` is not one."""
    if isinstance(data, list) and data:
        data = data[0]
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict) or "type" in err:  # not Google's, or already OpenAI's
        return None
    status = err.get("status")
    code = err.get("code")
    if not isinstance(status, str) or not status:
        status = ""
    kind = _TYPES.get(status)
    if kind is None:
        number = code if isinstance(code, int) else 0
        kind = (
            "rate_limit_error"
            if number == 429
            else ("api_error" if number >= 500 else "invalid_request_error")
        )
    message = err.get("message")
    return {
        "message": message if isinstance(message, str) else f"Gemini error {status or code}",
        "type": kind,
        "param": None,
        "code": status.lower() or (str(code) if code is not None else None),
    }


def openai_error_body(body: bytes) -> bytes:
    """An upstream error body in OpenAI's shape (as it came when it is not Google's)."""
    try:
        error = openai_error(orjson.loads(body))
    except orjson.JSONDecodeError:
        return body
    return body if error is None else orjson.dumps({"error": error})


def fix_tool_finish(chunk: dict[str, Any], called: bool) -> tuple[bool, bool]:
    """Whether a chunk (or answer) calls a tool, counting `called` (an earlier chunk did),
    and whether it changed: a `stop` after a call becomes `tool_calls` in place, as OpenAI
    says it."""
    changed = False
    choices = chunk.get("choices")
    for choice in choices if isinstance(choices, list) else ():
        if not isinstance(choice, dict):
            continue
        said = choice.get("delta") or choice.get("message")
        if isinstance(said, dict) and said.get("tool_calls"):
            called = True
        if called and choice.get("finish_reason") == "stop":
            choice["finish_reason"] = "tool_calls"
            changed = True
    return called, changed


class _GeminiEvents:
    """Gemini's stream events as OpenAI's, before a Chat stream or a translator reads them."""

    _called = False
    """A tool call came: the `stop` that ends this answer is a `tool_calls`."""

    def _openai_events(self, events: list[SSEEvent]) -> list[SSEEvent]:
        if any(e.data.startswith(b"[") or _TOOL_CALLS in e.data for e in events) or (
            self._called and any(_FINISH in e.data for e in events)
        ):
            return [self._as_openai(event) for event in events]
        return events

    def _as_openai(self, event: SSEEvent) -> SSEEvent:
        if _TOOL_CALLS in event.data or (self._called and _FINISH in event.data):
            return self._tool_finish(event)
        return _event_as_openai(event)

    def _tool_finish(self, event: SSEEvent) -> SSEEvent:
        try:
            chunk = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            return event  # the OpenAI stream reports it
        if type(chunk) is not dict:
            return event
        self._called, changed = fix_tool_finish(chunk, self._called)
        if not changed:
            return event
        data = orjson.dumps(chunk)
        return SSEEvent(data, event.event, b"data: " + data + b"\n\n")


class GeminiStream(_GeminiEvents, OpenAIStream):
    split_usage = True

    def translate(self, events: list[SSEEvent], out: list[bytes]) -> None:
        super().translate(self._openai_events(events), out)


class GeminiTranslatedStream(_GeminiEvents, TranslatedStream):
    """A Gemini stream translated for a Responses or Messages client."""

    def translate(self, events: list[SSEEvent], out: list[bytes]) -> None:
        super().translate(self._openai_events(events), out)


_TOOL_CALLS = b'"tool_calls"'
_FINISH = b'"finish_reason"'


def _event_as_openai(event: SSEEvent) -> SSEEvent:
    """A Google-shaped error event (`[{"error": ...}]`) as OpenAI's `{"error": ...}`."""
    if not event.data.startswith(b"["):
        return event
    try:
        error = openai_error(orjson.loads(event.data))
    except orjson.JSONDecodeError:
        return event  # the OpenAI stream reports it
    if error is None:
        return event
    data = orjson.dumps({"error": error})
    return SSEEvent(data, event.event, b"data: " + data + b"\n\n")


class GeminiProvider(OpenAIProvider):
    stream_class = GeminiStream
    translated_class = GeminiTranslatedStream

    def _answer_body(self, body: bytes, data: dict[str, Any]) -> bytes:
        if _TOOL_CALLS in body and fix_tool_finish(data, False)[1]:
            return orjson.dumps(data)
        return body

    def _error_body(self, body: bytes) -> bytes:
        if _API_KEY_INVALID in body:
            # Gemini's answer to a key it does not take is a 400; it is the gateway's
            # credential, so the gateway's fault (502), never the client's 400.
            raise error_from_status(self.config.name, 401, b"")
        return openai_error_body(body)


_API_KEY_INVALID = b'"API_KEY_INVALID"'
"""The reason of Gemini's `ErrorInfo` detail when it refuses the key (`API key not
valid`)."""
