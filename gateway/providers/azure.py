"""Azure OpenAI: the OpenAI provider with Azure's URLs, credential header and stream quirks.

Routes. By default the classic deployments route, where the model is the deployment in
the URL: `{base_url}/openai/deployments/{upstream_model}/chat/completions?api-version=V`
(and `/completions`, `/embeddings`; `api_version` defaults to `AZURE_API_VERSION`). A
Responses client of a provider with `apis: [chat, responses]` goes to
`{base_url}/openai/responses?api-version=V` with the deployment as the body's `model`.
`api_version: v1` picks Azure's newer v1 route instead, `{base_url}/openai/v1/...` with the
deployment in the body and no api-version, for every API. The body's `model` is the
deployment on both routes (the classic route ignores it).

Credentials: `api-key: KEY`, or with `auth: bearer`, `Authorization: Bearer KEY` (an Entra
ID token given as the key; the gateway does not fetch or refresh tokens).

Stream quirks: Azure's content filter annotates a stream. Its first event is often a
`prompt_filter_results` chunk with `"choices": []`, sent as soon as the prompt passed the
filter, before the model produced anything; with asynchronous filtering, annotation-only
chunks (`content_filter_results` / `content_filter_offsets`, no delta) come after the
answer. Both are dropped (`AzureStream`): they carry nothing a Chat client reads, many
clients index `choices[0]` or read `delta` without checking, and relaying the first one
would start the response and stop the time-to-first-token clock before the first token.
The `content_filter_results` riding on ordinary chunks pass through untouched (the SDKs
ignore fields they do not know), as do Azure's error bodies, which already have OpenAI's
shape (the content filter's 400 with `code: content_filter` and `innererror`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import orjson

from gateway.providers.openai import API_PATHS, OpenAIProvider, OpenAIStream
from gateway.sse import SSEEvent

_ANNOTATIONS = (b'"prompt_filter_results"', b'"content_filter_')
_DELTA = b'"delta"'


class AzureStream(OpenAIStream):
    def translate(self, events: list[SSEEvent], out: list[bytes]) -> None:
        kept = [event for event in events if not _annotation_only(event.data)]
        if kept:
            super().translate(kept, out)


def _annotation_only(data: bytes) -> bool:
    """Whether an event is one of the content filter's own: annotations, no delta, text,
    finish reason or usage. Only events that name an annotation and carry no delta are
    parsed (every Azure chunk names one; nearly all carry a delta)."""
    if _DELTA in data or not any(mark in data for mark in _ANNOTATIONS):
        return False
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False  # the OpenAI stream reports it
    if type(chunk) is not dict or chunk.get("usage") or chunk.get("error"):
        return False
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        return False
    return all(_annotation_choice(choice) for choice in choices)


def _annotation_choice(choice: Any) -> bool:
    return (
        type(choice) is dict
        and "delta" not in choice
        and "text" not in choice
        and not choice.get("finish_reason")
    )


class AzureProvider(OpenAIProvider):
    stream_class = AzureStream

    def _auth(self) -> dict[str, str] | None:
        key = self.config.api_key
        if not key:
            return None
        if self.config.auth == "bearer":
            return {"authorization": f"Bearer {key}"}
        return {"api-key": key}

    def _url(self, path: str, model: str) -> str:
        base, version = self.config.base_url, self.config.api_version
        if version == "v1":
            return f"{base}/openai/v1{API_PATHS[path]}"
        query = f"?api-version={quote(version, safe='')}"
        if path == "responses":
            return f"{base}/openai/responses{query}"
        # A deployment name is one path segment, whatever it holds.
        return f"{base}/openai/deployments/{quote(model, safe='')}{API_PATHS[path]}{query}"
