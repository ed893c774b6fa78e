"""Fakes of Azure OpenAI and of Gemini's OpenAI-compatible endpoint, on a real socket.

Both are `FakeUpstream` (same scenarios, chosen by the upstream model's name) with the
wire format of the cloud in front:

- `FakeAzure` answers `/openai/deployments/{deployment}/{chat/completions, completions,
  embeddings}?api-version=V` (the scenario is the URL-decoded deployment), and
  `/openai/v1/...` and `/openai/responses?api-version=V` (the scenario is the body's
  model). It wants `api-key: KEY` (or `Authorization: Bearer KEY`), else answers Azure's
  401; an api-version it does not know, or another path, is Azure's 404. A stream starts
  with the content filter's `prompt_filter_results` chunk (`"choices": []`), every chunk's
  choices carry `content_filter_results` and the keys are sorted (as Azure writes them),
  and an annotation-only chunk (no delta) follows the finish. `filter_gap=1`: the
  scenario's `stall_s` passes between the prompt filter chunk and the first token.
  Scenario `content_filter`: the filter's 400 on the prompt.
- `FakeGemini` answers under `/v1beta/openai/`, wants `Authorization: Bearer KEY`, else
  answers 400 `API key not valid` as Gemini does; errors are Google's JSON list
  (`[{"error": {"code", "message", "status"}}]`). A stream's chunks leave out
  `finish_reason: null`, and the last one carries the last text, the finish reason and the
  usage together; a tool call ends with `finish_reason: "stop"`. Scenario `gemini_midstream`: an error event in Google's list shape
  after three tokens.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import parse_qsl, unquote

import orjson

from tests.support.fake_upstream import _CLOSE, _SSE_HEAD, _STALL, FakeUpstream, Seen

_SAFE = {"filtered": False, "severity": "safe"}
FILTER_RESULTS = {"hate": _SAFE, "self_harm": _SAFE, "sexual": _SAFE, "violence": _SAFE}
AZURE_VERSIONS = frozenset({"2024-10-21", "2025-04-01-preview"})
AZURE_401 = {
    "error": {
        "code": "401",
        "message": "Access denied due to invalid subscription key or wrong API endpoint. "
        "Make sure to provide a valid key for an active subscription and use a correct "
        "regional API endpoint for your resource.",
    }
}
AZURE_404 = {"error": {"code": "404", "message": "Resource not found"}}
CONTENT_FILTER_400 = {
    "error": {
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's "
        "content management policy. Please modify your prompt and retry.",
        "type": None,
        "param": "prompt",
        "code": "content_filter",
        "status": 400,
        "innererror": {
            "code": "ResponsibleAIPolicyViolation",
            "content_filter_result": {
                **FILTER_RESULTS,
                "violence": {"filtered": True, "severity": "medium"},
            },
        },
    }
}
_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


def google_error(code: int, message: str) -> list[dict[str, Any]]:
    return [{"error": {"code": code, "message": message, "status": _GOOGLE_STATUS[code]}}]


def _events(events: Any) -> Any:
    """The JSON chunks of an OpenAI event stream (bytes), markers and `[DONE]` as they are."""
    for event in events:
        if isinstance(event, bytes) and event.startswith(b"data: {"):
            yield orjson.loads(event[6:])
        else:
            yield event


def _sse(chunk: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(chunk, option=orjson.OPT_SORT_KEYS) + b"\n\n"


class _CloudFake(FakeUpstream):
    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key

    async def _reply(self, seen: Seen, writer: asyncio.StreamWriter, code: int, body: Any) -> bool:
        self._write_full(writer, code, orjson.dumps(body), "application/json")
        await writer.drain()
        seen.ended = time.monotonic()
        return True


class FakeAzure(_CloudFake):
    async def _answer(
        self, seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        seen.path, _, seen.query = seen.path.partition("?")
        query = dict(parse_qsl(seen.query))
        if self.key not in (seen.headers.get("api-key"), _bearer(seen)):
            return await self._reply(seen, writer, 401, AZURE_401)
        parts = seen.path.split("/")
        if seen.path.startswith("/openai/v1/") and "api-version" not in query:
            pass  # the model is the body's
        elif query.get("api-version") not in AZURE_VERSIONS:
            return await self._reply(seen, writer, 404, AZURE_404)
        elif seen.path == "/openai/responses":
            pass
        elif parts[:3] == ["", "openai", "deployments"] and len(parts) > 4:
            seen.body["model"] = unquote(parts[3])  # the deployment decides, not the body
        else:
            return await self._reply(seen, writer, 404, AZURE_404)
        if str(seen.body.get("model", "")).startswith("content_filter"):
            return await self._reply(seen, writer, 400, CONTENT_FILTER_400)
        return await super()._answer(seen, reader, writer)

    def _openai_events(self, seen: Seen, scenario: str, params: dict[str, str]) -> Any:
        if seen.path.endswith("/responses"):  # the Responses API's own events
            yield from super()._openai_events(seen, scenario, params)
            return
        yield _sse(
            {
                "choices": [],
                "created": 0,
                "id": "",
                "model": "",
                "object": "",
                "prompt_filter_results": [
                    {"prompt_index": 0, "content_filter_results": FILTER_RESULTS}
                ],
            }
        )
        if params.get("filter_gap"):
            yield _STALL
        finished = annotated = False
        for chunk in _events(super()._openai_events(seen, scenario, params)):
            choices = chunk.get("choices") if isinstance(chunk, dict) else None
            if finished and not annotated and not choices:
                # Asynchronous filtering: its last annotation comes after the answer.
                yield _sse(_annotation())
                annotated = True
            if not isinstance(chunk, dict):
                yield chunk
                continue
            for choice in choices or []:
                choice["content_filter_results"] = FILTER_RESULTS
                choice.setdefault("logprobs", None)
                finished = finished or bool(choice.get("finish_reason"))
            yield _sse({**chunk, "system_fingerprint": "fp_fake"})

    def _complete(self, seen: Seen, scenario: str, params: dict[str, str], anthropic: bool) -> Any:
        body = super()._complete(seen, scenario, params, anthropic)
        if isinstance(body, dict) and body.get("object") == "chat.completion":
            body["prompt_filter_results"] = [
                {"prompt_index": 0, "content_filter_results": FILTER_RESULTS}
            ]
            for choice in body["choices"]:
                choice["content_filter_results"] = FILTER_RESULTS
        return body


def _annotation() -> dict[str, Any]:
    return {
        "choices": [
            {
                "content_filter_offsets": {"check_offset": 0, "start_offset": 0, "end_offset": 9},
                "content_filter_results": FILTER_RESULTS,
                "finish_reason": None,
                "index": 0,
            }
        ],
        "created": 0,
        "id": "",
        "model": "",
        "object": "",
    }


def _bearer(seen: Seen) -> str:
    scheme, _, token = seen.headers.get("authorization", "").partition(" ")
    return token if scheme == "Bearer" else ""


class FakeGemini(_CloudFake):
    async def _answer(
        self, seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        if not seen.path.startswith("/v1beta/openai/"):
            return await self._reply(seen, writer, 404, google_error(404, "Not Found"))
        if _bearer(seen) != self.key:
            error = google_error(400, "API key not valid. Please pass a valid API key.")
            error[0]["error"]["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                }
            ]
            return await self._reply(seen, writer, 400, error)
        model = str(seen.body.get("model", ""))
        if model.startswith("status"):
            code = int(dict(parse_qsl(model.partition("?")[2])).get("code", "500"))
            return await self._reply(seen, writer, code, google_error(code, f"fake {code}"))
        if model.startswith("gemini_midstream") and seen.body.get("stream"):
            events = list(self._openai_events(seen, "text", {"n": "6"}))[:4]
            error = google_error(500, "fake midstream failure")
            writer.write(_SSE_HEAD)
            await self._write_chunks(writer, [*events, b"data: " + orjson.dumps(error) + b"\n\n"])
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return True
        return await super()._answer(seen, reader, writer)

    def _openai_events(self, seen: Seen, scenario: str, params: dict[str, str]) -> Any:
        held: dict[str, Any] | None = None
        for chunk in _events(super()._openai_events(seen, scenario, {**params, "usage": "finish"})):
            if not isinstance(chunk, dict):
                if held is not None and (chunk is _CLOSE or chunk.startswith(b"data: [DONE]")):
                    yield _gemini_sse(held)
                    held = None
                yield chunk
                continue
            choice = (chunk.get("choices") or [{}])[0]
            if choice.get("finish_reason") == "tool_calls":
                choice["finish_reason"] = "stop"  # as Gemini ends a streamed tool call
            if choice.get("finish_reason") and held is not None:
                # Gemini's last chunk: the last text, the finish and the usage in one.
                last = held["choices"][0]["delta"]
                choice["delta"] = {**last, **choice.get("delta", {})}
                held = None
            if held is not None:
                yield _gemini_sse(held)
            held = chunk
        if held is not None:
            yield _gemini_sse(held)


def _gemini_sse(chunk: dict[str, Any]) -> bytes:
    for choice in chunk.get("choices") or []:
        if choice.get("finish_reason") is None:
            choice.pop("finish_reason", None)
    return b"data: " + orjson.dumps(chunk) + b"\n\n"
