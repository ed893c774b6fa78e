"""Anthropic's Messages API behind the OpenAI chat.completions interface.

The client's request is rewritten as a Messages request (`gateway.protocols`, the one
Chat -> Messages translator every client API goes through), sent to
`{base_url}/v1/messages`, and the answer translated back: each Anthropic stream event
becomes at most one `chat.completion.chunk` event, written the moment it is translated
(no coalescing), so the client's SDK sees an OpenAI stream: a role chunk, content and
`tool_calls` deltas (tool blocks numbered 0, 1, 2... as OpenAI does), a finish chunk, the
usage-only chunk when the client asked for it, then `data: [DONE]`. A non-streaming answer
becomes a `chat.completion`. Anthropic's error bodies are rewritten in OpenAI's shape, so a
400 reaches the client with Anthropic's own words; a 529 (overloaded) is a retryable 503.

Deliberately dropped: `thinking` / `redacted_thinking` blocks and their deltas (OpenAI's
chat format has no place for them: a Chat client's `reasoning_effort` turns thinking on,
and, as from OpenAI's own reasoning models, only its token count comes back), signature
and citation deltas, server-tool blocks (`server_tool_use`, web search results: the
upstream ran them, the client has nothing to call), `ping` events (the relay sends its
own keep-alives), and event types this module does not know (Anthropic adds them;
ignoring them is forward compatible). Only the chat.completions route is served:
Anthropic has no completions or embeddings API.

A Messages client (`UpstreamCall.api`) is relayed: its body goes as it came (the model
set, its `anthropic-version` / `anthropic-beta` headers passed on) and the answer's events
pass as Anthropic's own bytes (`PassThroughStream`), thinking blocks included. A Responses
client is translated to Messages and back (`gateway.protocols`, `TranslatedStream`), with
reasoning carried both ways.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson

from gateway.config import ProviderConfig, Timeouts
from gateway.errors import InvalidRequest, UpstreamError
from gateway.protocols import translate_answer, translate_request
from gateway.protocols.messages import usage_of
from gateway.providers.answers import fetch_json, malformed, open_event_stream
from gateway.providers.anthropic_format import (
    INPUT_KEYS,
    as_int,
    cache_counts,
    chat_completion,
    finish_reason,
    openai_error_body,
)
from gateway.providers.base import (
    Completion,
    UpstreamCall,
    Usage,
)
from gateway.providers.redact import Redactor
from gateway.providers.requests import Target, UpstreamRequests
from gateway.providers.streams import (
    PassThroughStream,
    SSEUpstream,
    TranslatedStream,
    charged_usage,
)
from gateway.sse import SSEEvent
from gateway.transports.native import NativeRequest, NativeResponse

ANTHROPIC_VERSION = "2023-06-01"
_DONE = b"data: [DONE]\n\n"
# Error events Anthropic documents as transient: worth another attempt while nothing has
# reached the client yet (the relay never retries after the first byte).
_TRANSIENT_ERRORS = frozenset({"overloaded_error", "api_error"})
# Members of a Messages request that count_tokens does not take (it refuses extra inputs).
_NOT_COUNTED = frozenset(
    {
        "max_tokens",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "metadata",
        "service_tier",
    }
)


class AnthropicStream(SSEUpstream):
    """Anthropic stream events in, OpenAI `chat.completion.chunk` events out."""

    def __init__(
        self,
        response: httpx.Response | NativeResponse,
        provider: str,
        *,
        include_usage: bool,
        keep_text: bool = False,
        max_event_bytes: int = 1024 * 1024,
        model: str = "",
        redact: Redactor | None = None,
    ) -> None:
        super().__init__(
            response,
            provider,
            include_usage=include_usage,
            keep_text=keep_text,
            max_event_bytes=max_event_bytes,
            redact=redact,
        )
        # Replaced at message_start; these only name chunks of a stream that skipped it.
        self._id = "chatcmpl-anthropic"
        self._model = model
        self._created = int(time.time())
        self._head = self._chunk_head()
        # Content block index -> OpenAI tool_calls index: tool blocks only, counted from 0.
        self._tool_index: dict[int, int] = {}
        # The latest count of each kind of input token; prompt_tokens is their sum.
        self._input_tokens: dict[str, int] = {}
        self._usage_final = False

    def _chunk_head(self) -> bytes:
        # Every chunk of a stream shares id, created and model: serialise them once.
        return (
            b'data: {"id":'
            + orjson.dumps(self._id)
            + b',"object":"chat.completion.chunk","created":'
            + str(self._created).encode()
            + b',"model":'
            + orjson.dumps(self._model)
        )

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return (
            self._head
            + b',"choices":[{"index":0,"delta":'
            + orjson.dumps(delta)
            + b',"logprobs":null,"finish_reason":'
            + orjson.dumps(finish_reason)
            + b"}]}\n\n"
        )

    def translate(self, events: list[SSEEvent], out: list[bytes]) -> None:
        for event in events:
            if not event.data:
                continue  # comments: the relay sends its own keep-alives
            try:
                payload = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                raise malformed(self.provider, "an event that is not JSON") from None
            if not isinstance(payload, dict):
                raise malformed(self.provider, "an event that is not a JSON object")
            kind = payload.get("type") or event.event
            if kind == "content_block_delta":
                self._on_delta(payload, out)
            elif kind == "content_block_start":
                self._on_block_start(payload, out)
            elif kind == "message_start":
                self._on_message_start(payload, out)
            elif kind == "message_delta":
                self._on_message_delta(payload, out)
            elif kind == "message_stop":
                self._on_message_stop(out)
            elif kind == "error":
                raise _error_event(self.provider, payload.get("error"))
            # ping, content_block_stop and types added after this was written: nothing to say

    def _on_message_start(self, payload: dict[str, Any], out: list[bytes]) -> None:
        message = payload.get("message")
        message = message if isinstance(message, dict) else {}
        if isinstance(message.get("id"), str):
            self._id = "chatcmpl-" + message["id"]
        if isinstance(message.get("model"), str):
            self._model = message["model"]
        self._created = int(time.time())
        self._head = self._chunk_head()
        self.state.usage = Usage(prompt_tokens=self._count_input(message.get("usage")))
        cache_counts(message.get("usage"), self.state.usage)
        out.append(self._chunk({"role": "assistant", "content": ""}))

    def _count_input(self, usage: Any) -> int:
        if isinstance(usage, dict):
            for key in INPUT_KEYS:
                value = usage.get(key)
                if isinstance(value, int) and not isinstance(value, bool):
                    self._input_tokens[key] = value
        return sum(self._input_tokens.values())

    def _on_block_start(self, payload: dict[str, Any], out: list[bytes]) -> None:
        block = payload.get("content_block")
        if not isinstance(block, dict):
            return
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            if text and isinstance(text, str):
                self._emit_text(text, out)
        elif kind == "tool_use":
            index = len(self._tool_index)
            self._tool_index[as_int(payload.get("index"))] = index
            call = {
                "index": index,
                "id": block.get("id"),
                "type": "function",
                "function": {"name": block.get("name"), "arguments": ""},
            }
            out.append(self._chunk({"tool_calls": [call]}))

    def _on_delta(self, payload: dict[str, Any], out: list[bytes]) -> None:
        delta = payload.get("delta")
        if not isinstance(delta, dict):
            return
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta.get("text")
            if text and isinstance(text, str):
                self._emit_text(text, out)
        elif kind == "input_json_delta":
            index = self._tool_index.get(as_int(payload.get("index")))
            partial = delta.get("partial_json")
            # Server-tool blocks stream their input too: not the client's to call.
            if index is None or not partial or not isinstance(partial, str):
                return
            self._count_delta()
            call = {"index": index, "function": {"arguments": partial}}
            out.append(self._chunk({"tool_calls": [call]}))
        # thinking_delta, signature_delta, citations_delta: no place in OpenAI's format

    def _emit_text(self, text: str, out: list[bytes]) -> None:
        self._count_delta()
        if self.keep_text:
            self.state.text.append(text)
        out.append(self._chunk({"content": text}))

    def _count_delta(self) -> None:
        state = self.state
        state.completion_estimate += 1
        # Until message_delta reports the real count, the usage set at message_start carries
        # the estimate: a stream cut short is then charged what it relayed, never zero.
        if state.usage is not None and not self._usage_final:
            state.usage.completion_tokens = state.completion_estimate

    def _on_message_delta(self, payload: dict[str, Any], out: list[bytes]) -> None:
        state = self.state
        usage = payload.get("usage")
        if isinstance(usage, dict):
            if state.usage is None:
                state.usage = Usage()
            # message_delta's counts are cumulative; input counts there (when server tools
            # read more input) replace message_start's.
            state.usage.prompt_tokens = self._count_input(usage)
            if "cache_read_input_tokens" in usage or "cache_creation_input_tokens" in usage:
                cache_counts(usage, state.usage)
            output = usage.get("output_tokens")
            if isinstance(output, int):
                state.usage.completion_tokens = output
                self._usage_final = True
        delta = payload.get("delta")
        stop_reason = delta.get("stop_reason") if isinstance(delta, dict) else None
        reason = finish_reason(stop_reason)
        if stop_reason:
            state.finished = True
            state.finish_reason = reason
        out.append(self._chunk({}, reason))

    def _on_message_stop(self, out: list[bytes]) -> None:
        state = self.state
        usage = state.usage
        if self.include_usage and usage is not None:
            total = usage.prompt_tokens + usage.completion_tokens
            out.append(
                self._head
                + b',"choices":[],"usage":'
                + orjson.dumps(
                    {
                        "prompt_tokens": usage.prompt_tokens,
                        "completion_tokens": usage.completion_tokens,
                        "total_tokens": total,
                    }
                )
                + b"}\n\n"
            )
        state.finished = True
        state.done_sent = True
        out.append(_DONE)


def _error_event(provider: str, error: Any) -> UpstreamError:
    kind = error.get("type") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    text = f"{kind}: {message}" if kind and message else str(kind or message or "an error event")
    return UpstreamError(
        f"provider {provider!r} failed mid-stream: {text[:500]}",
        kind="error_event",
        retryable=kind in _TRANSIENT_ERRORS,
    )


class AnthropicProvider:
    def __init__(
        self,
        config: ProviderConfig,
        transport: httpx.AsyncBaseTransport,
        timeouts: Timeouts,
        *,
        keep_text: bool = False,
        max_event_bytes: int = 1024 * 1024,
    ) -> None:
        self.config = config
        self._transport = transport
        self._keep_text = keep_text
        self._max_event_bytes = max_event_bytes
        # Configured headers come after the version, so a config can pin another one.
        self._requests = UpstreamRequests(
            config,
            timeouts,
            defaults={"anthropic-version": ANTHROPIC_VERSION},
            auth={"x-api-key": config.api_key} if config.api_key else None,
            transport=transport,
        )
        self._redact = Redactor.for_provider(config)
        self._pinned = frozenset(name.lower() for name in config.headers)
        """Headers the config sets: a Messages client's own do not replace them."""
        # A base_url written with or without Anthropic's /v1 both work; parsed on first use.
        base = config.base_url.rstrip("/")
        self._url_text = base + ("/messages" if base.endswith("/v1") else "/v1/messages")
        self._target: Target | None = None

    def _request(self, call: UpstreamCall) -> httpx.Request | NativeRequest:
        """A stream's upstream request: in bytes over the native transport."""
        content = self._content(call, stream=True)
        return self._requests.stream(
            self._messages_target(),
            content,
            traceparent=call.traceparent,
            extra=self._passed(call),
            timeouts=call.model.timeouts,
        )

    def _plain_request(self, call: UpstreamCall) -> httpx.Request:
        content = self._content(call, stream=False)
        return self._requests.build(
            self._messages_target().url,
            content,
            stream=False,
            traceparent=call.traceparent,
            extra=self._passed(call),
            timeouts=call.model.timeouts,
        )

    def _messages_target(self) -> Target:
        target = self._target
        if target is None:
            target = self._target = self._requests.target(self._url_text)
        return target

    def _passed(self, call: UpstreamCall) -> list[tuple[str, str]]:
        """The client's headers sent on (`passed_headers`), but those the config sets."""
        return [(k, v) for k, v in call.passed_headers if k not in self._pinned]

    def _content(self, call: UpstreamCall, *, stream: bool) -> bytes:
        if call.route != "chat.completions":
            path = "/v1/" + call.route.replace(".", "/")
            raise InvalidRequest(
                f"model {call.model.name!r} is served by provider {self.config.name!r} of "
                f"type anthropic, which does not serve {path}; use /v1/chat/completions",
                status=400,
            )
        if call.api == "messages":
            body = dict(call.body)  # relayed as it came: the client's own dict stays as it was
        else:
            body = translate_request(call.body, call.api, "messages")  # a new dict
        body["model"] = call.model.upstream_model or call.model.name
        body["stream"] = stream
        try:
            return orjson.dumps(body)
        except orjson.JSONEncodeError:
            # Tool-call arguments arrive as JSON strings, parsed only here: the client's body
            # passed the edge's depth check, what its strings held did not.
            raise InvalidRequest(
                "a tool call's `arguments` nest too deeply to forward", status=400
            ) from None

    async def open_stream(self, call: UpstreamCall) -> SSEUpstream:
        request = self._request(call)
        response = await open_event_stream(
            self._transport, request, self.config.name, openai_error_body, redact=self._redact
        )
        if call.api == "messages":
            return PassThroughStream(
                response,
                self.config.name,
                api="messages",
                keep_text=self._keep_text,
                max_event_bytes=self._max_event_bytes,
                redact=self._redact,
            )
        if call.api == "responses":
            return TranslatedStream(
                response,
                self.config.name,
                upstream="messages",
                client="responses",
                request=call.body,
                keep_text=self._keep_text,
                max_event_bytes=self._max_event_bytes,
                redact=self._redact,
            )
        return AnthropicStream(
            response,
            self.config.name,
            include_usage=call.include_usage,
            keep_text=self._keep_text,
            max_event_bytes=self._max_event_bytes,
            model=call.model.upstream_model or call.model.name,
            redact=self._redact,
        )

    async def complete(self, call: UpstreamCall) -> Completion:
        request = self._plain_request(call)
        headers: dict[str, str] = {}  # the router shows them to the upstream limiter
        raw, data = await fetch_json(
            self._transport,
            request,
            self.config.name,
            openai_error_body,
            redact=self._redact,
            headers_into=headers,
        )
        if call.api == "chat":
            body, usage = chat_completion(data)
            return Completion(body=orjson.dumps(body), usage=usage, upstream_headers=headers)
        counts = data.get("usage")
        tokens = usage_of(counts) if isinstance(counts, dict) else None
        charged = charged_usage(tokens) if tokens else None
        if call.api == "messages":
            return Completion(body=raw, usage=charged, upstream_headers=headers)
        answer = translate_answer("messages", call.api, data, call.body)
        return Completion(body=orjson.dumps(answer), usage=charged, upstream_headers=headers)

    async def count_tokens(self, call: UpstreamCall) -> bytes:
        """Anthropic's own count for a Messages request (`/v1/messages/count_tokens`): its
        answer as it came, or the gateway error for its failure."""
        body = {k: v for k, v in call.body.items() if k not in _NOT_COUNTED}
        body["model"] = call.model.upstream_model or call.model.name
        url = httpx.URL(self._url_text + "/count_tokens")
        request = self._requests.build(
            url, orjson.dumps(body), stream=False, timeouts=call.model.timeouts
        )
        for name, value in call.passed_headers:
            if name not in self._pinned:
                request.headers[name] = value
        raw, _ = await fetch_json(
            self._transport, request, self.config.name, openai_error_body, redact=self._redact
        )
        return raw

    async def aclose(self) -> None:
        """The shared transport belongs to the app; nothing of its own to close."""
