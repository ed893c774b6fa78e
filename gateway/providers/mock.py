"""The built-in simulated model: deterministic replies at a realistic pace, no network.

It is what the embedded default runs on, so a new user sees tokens stream before they have
any provider key, and what the playground page talks to. Replies are derived from the
prompt (same prompt, same reply), paced by `first_token_ms` and `token_ms`, cut at
`max_tokens` (finish reason `length`) and followed by a usage report like a real provider.
It serves chat completions, completions and embeddings, and the Responses and Messages
APIs: their requests are read as Chat requests and the answer translated
(`gateway.protocols`), as for an OpenAI-compatible upstream that serves Chat only. Given
`tools` (and a last message from the user), it calls the first one, with arguments made
from its parameters' schema and streamed in pieces, as a real model does.
Embeddings come as OpenAI sends them:
`dimensions` long (64 when not asked), float32 values, as a JSON list (`encoding_format:
"float"`) or base64 of their little-endian bytes (`"base64"`, what the OpenAI SDKs ask for by
default and decode); both forms carry the same numbers.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import sys
import time
import uuid
from array import array
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import orjson

from gateway.config import ProviderConfig, Timeouts
from gateway.errors import GatewayError, InvalidRequest
from gateway.protocols import StreamTranslator, stream_translator, translate_answer
from gateway.protocols import translate_request as _translate_request
from gateway.protocols.events import Error
from gateway.providers.base import Completion, Sink, StreamState, UpstreamCall, Usage
from gateway.sse import SSEDecoder
from gateway.tokens import estimate_tokens

_WORDS = [
    "the",
    "gateway",
    "relays",
    "each",
    "token",
    "as",
    "it",
    "arrives",
    "so",
    "your",
    "reader",
    "sees",
    "the",
    "answer",
    "grow",
    "instead",
    "of",
    "waiting",
    "for",
    "the",
    "whole",
    "reply",
    "streaming",
    "keeps",
    "latency",
    "low",
    "and",
    "lets",
    "a",
    "client",
    "stop",
    "early",
    "when",
    "it",
    "has",
    "seen",
    "enough",
    "every",
    "chunk",
    "is",
    "an",
    "event",
    "of",
    "its",
    "own",
    "limits",
    "and",
    "quotas",
    "are",
    "checked",
    "before",
    "the",
    "first",
    "byte",
    "and",
    "settled",
    "with",
    "real",
    "usage",
]


def _prompt_text(call: UpstreamCall) -> str:
    body = call.body
    if call.route == "chat.completions":
        parts: list[str] = []
        for message in body.get("messages") or []:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
        return "\n".join(parts)
    value = body.get("prompt") if call.route == "completions" else body.get("input")
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _reply_words(prompt: str, count: int) -> list[str]:
    seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "big")
    start = seed % len(_WORDS)
    words = [_WORDS[(start + i) % len(_WORDS)] for i in range(count)]
    return [("" if i == 0 else " ") + w for i, w in enumerate(words)]


def _max_tokens(body: dict[str, Any]) -> int | None:
    value = body.get("max_completion_tokens") or body.get("max_tokens")
    return value if isinstance(value, int) and value > 0 else None


def _plan(cfg: ProviderConfig, call: UpstreamCall) -> tuple[str, list[str], str]:
    """The prompt, the reply's words and its finish reason: one plan for both answer forms."""
    prompt = _prompt_text(call)
    limit = _max_tokens(call.body)
    count = cfg.reply_tokens if limit is None else min(limit, cfg.reply_tokens)
    finish = "length" if limit is not None and limit < cfg.reply_tokens else "stop"
    return prompt, _reply_words(prompt, count), finish


_ARG_PIECE = 8
"""Characters of a tool call's arguments per streamed delta."""


def _tool_call(call: UpstreamCall, prompt: str) -> tuple[str, str] | None:
    """The tool the mock calls and its arguments (JSON), or None: no tools offered, the
    client said `tool_choice: none`, or the last message is already a tool's result."""
    body = call.body
    tools = body.get("tools")
    messages = body.get("messages")
    if call.route != "chat.completions" or not isinstance(tools, list) or not tools:
        return None
    if body.get("tool_choice") == "none" or not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        return None
    tool = tools[0] if isinstance(tools[0], dict) else {}
    given = tool.get("function")
    function: dict[str, Any] = given if isinstance(given, dict) else {}
    name = function.get("name") if isinstance(function.get("name"), str) else "tool"
    schema = function.get("parameters")
    properties = schema.get("properties") if isinstance(schema, dict) else None
    words = prompt.split()[:6]
    arguments: dict[str, Any] = {}
    for field, spec in (properties if isinstance(properties, dict) else {}).items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        if kind in ("integer", "number"):
            arguments[field] = len(words)
        elif kind == "boolean":
            arguments[field] = True
        elif kind == "array":
            arguments[field] = words[:3]
        else:
            arguments[field] = " ".join(words) or "demo"
    return str(name), orjson.dumps(arguments).decode()


_MAX_DIMENSIONS = 3072
"""The longest embedding OpenAI's models give (text-embedding-3-large)."""


def _embedding_shape(body: dict[str, Any]) -> tuple[int, bool]:
    """The embedding length asked for, and whether as base64; a 400 naming the parameter
    for a value OpenAI would refuse."""
    dims = body.get("dimensions")
    if dims is None:
        size = 64
    elif type(dims) is int and 0 < dims <= _MAX_DIMENSIONS:
        size = dims
    else:
        raise InvalidRequest(
            f"'dimensions' must be an integer from 1 to {_MAX_DIMENSIONS}", param="dimensions"
        )
    encoding = body.get("encoding_format")
    if encoding not in (None, "float", "base64"):
        raise InvalidRequest(
            "'encoding_format' must be 'float' or 'base64'", param="encoding_format"
        )
    return size, encoding == "base64"


class MockStream:
    def __init__(self, provider: MockProvider, call: UpstreamCall) -> None:
        self.state = StreamState()
        self._chunks = self._generate(provider, call)

    def __aiter__(self) -> MockStream:
        return self

    async def __anext__(self) -> bytes:
        return await self._chunks.__anext__()

    async def _generate(self, provider: MockProvider, call: UpstreamCall) -> AsyncIterator[bytes]:
        cfg = provider.config
        prompt, words, finish = _plan(cfg, call)
        chat = call.route == "chat.completions"
        base = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": call.model.upstream_model or call.model.name,
        }

        def event(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
            body: dict[str, Any] = {**base, "choices": choices}
            if usage is not None:
                body["usage"] = usage
            return b"data: " + orjson.dumps(body) + b"\n\n"

        def choice(delta: dict[str, Any] | str, finish_reason: str | None) -> dict[str, Any]:
            if chat:
                return {
                    "index": 0,
                    "delta": delta,
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            return {"index": 0, "text": delta, "logprobs": None, "finish_reason": finish_reason}

        await asyncio.sleep(cfg.first_token_ms / 1000)
        if chat:
            yield event([choice({"role": "assistant", "content": ""}, None)])
        state = self.state
        tool = _tool_call(call, prompt)
        if tool is not None:
            name, arguments = tool
            pieces = [arguments[i : i + _ARG_PIECE] for i in range(0, len(arguments), _ARG_PIECE)]
            words, finish = pieces, "tool_calls"
            head = {"index": 0, "id": "call_" + uuid.uuid4().hex[:24], "type": "function"}
            yield event([choice({"tool_calls": [{**head, "function": {"name": name}}]}, None)])
        for i, word in enumerate(words):
            if i:
                await asyncio.sleep(cfg.token_ms / 1000)
            state.completion_estimate += 1
            if tool is not None:
                delta: dict[str, Any] = {
                    "tool_calls": [{"index": 0, "function": {"arguments": word}}]
                }
                yield event([choice(delta, None)])
                continue
            yield event([choice({"content": word} if chat else word, None)])
        prompt_tokens = estimate_tokens(prompt)
        state.usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=len(words))
        state.finished = True
        state.finish_reason = finish
        tail = event([choice({} if chat else "", finish)])
        if call.include_usage:
            tail += event(
                [],
                {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": len(words),
                    "total_tokens": prompt_tokens + len(words),
                },
            )
        state.done_sent = True
        yield tail + b"data: [DONE]\n\n"

    def push(self, sink: Sink) -> bool:
        return False  # a generator, paced by its own sleeps: iterated

    def resume_push(self) -> None:
        pass

    async def aclose(self) -> None:
        await self._chunks.aclose()  # type: ignore[attr-defined]


class TranslatedMockStream:
    """The mock's Chat stream in the client's API (Responses, Messages)."""

    def __init__(self, inner: MockStream, call: UpstreamCall) -> None:
        self.state = inner.state
        self._inner = inner
        self._sse = SSEDecoder(1 << 20)
        self._translator: StreamTranslator = stream_translator("chat", call.api, request=call.body)
        self.state.end_event = self._translator.finish
        self.state.error_event = self._error_event

    def __aiter__(self) -> TranslatedMockStream:
        return self

    async def __anext__(self) -> bytes:
        feed = self._translator.feed
        while True:
            chunk = await self._inner.__anext__()
            out = b"".join([feed(event.data) for event in self._sse.feed(chunk) if event.data])
            if out:
                return out

    def _error_event(self, error: GatewayError) -> bytes:
        return self._translator.fail(Error(error.status, error.message, error.code))

    def push(self, sink: Sink) -> bool:
        return False

    def resume_push(self) -> None:
        pass

    async def aclose(self) -> None:
        await self._inner.aclose()


def _as_chat(call: UpstreamCall) -> UpstreamCall:
    """A Responses or Messages call as the Chat call the mock answers."""
    body = _translate_request(call.body, call.api, "chat")
    return replace(call, body=body, include_usage=True, api="chat")


class MockProvider:
    def __init__(self, config: ProviderConfig, timeouts: Timeouts) -> None:
        self.config = config

    async def open_stream(self, call: UpstreamCall) -> MockStream | TranslatedMockStream:
        if call.api != "chat":
            return TranslatedMockStream(MockStream(self, _as_chat(call)), call)
        return MockStream(self, call)

    async def complete(self, call: UpstreamCall) -> Completion:
        if call.api != "chat":
            answer = await self.complete(_as_chat(call))
            body = translate_answer("chat", call.api, orjson.loads(answer.body), call.body)
            return Completion(body=orjson.dumps(body), usage=answer.usage)
        if call.route == "embeddings":
            return self._embeddings(call)
        cfg = self.config
        prompt, words, finish = _plan(cfg, call)
        # The stream's pace, gathered: a non-streaming call takes as long.
        await asyncio.sleep((cfg.first_token_ms + cfg.token_ms * max(len(words) - 1, 0)) / 1000)
        usage = Usage(prompt_tokens=estimate_tokens(prompt), completion_tokens=len(words))
        content = "".join(words)
        model = call.model.upstream_model or call.model.name
        totals = {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        }
        tool = _tool_call(call, prompt)
        if call.route == "chat.completions":
            message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
            if tool is not None:
                name, arguments = tool
                function = {"name": name, "arguments": arguments}
                call_id = "call_" + uuid.uuid4().hex[:24]
                message = {**message, "content": None}
                message["tool_calls"] = [{"id": call_id, "type": "function", "function": function}]
                finish = "tool_calls"
                usage.completion_tokens = -(-len(arguments) // _ARG_PIECE)
                totals["completion_tokens"] = usage.completion_tokens
                totals["total_tokens"] = usage.prompt_tokens + usage.completion_tokens
            choice: dict[str, Any] = {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish,
            }
            kind, prefix = "chat.completion", "chatcmpl"
        else:
            choice = {"index": 0, "text": content, "logprobs": None, "finish_reason": finish}
            kind, prefix = "text_completion", "cmpl"
        body = {
            "id": f"{prefix}-{uuid.uuid4().hex[:24]}",
            "object": kind,
            "created": int(time.time()),
            "model": model,
            "choices": [choice],
            "usage": totals,
        }
        return Completion(body=orjson.dumps(body), usage=usage)

    def _embeddings(self, call: UpstreamCall) -> Completion:
        raw = call.body.get("input")
        inputs = [raw] if isinstance(raw, str) else list(raw) if isinstance(raw, list) else []
        size, as_base64 = _embedding_shape(call.body)
        data = []
        tokens = 0
        for i, item in enumerate(inputs):
            text = item if isinstance(item, str) else orjson.dumps(item).decode()
            tokens += estimate_tokens(text)
            digest = hashlib.sha256(text.encode()).digest()
            vector = [((digest[j % 32] + j) % 256) / 127.5 - 1.0 for j in range(size)]
            norm = math.sqrt(sum(v * v for v in vector)) or 1.0
            # float32, as OpenAI's: the list and the base64 form then hold the same numbers.
            floats = array("f", [v / norm for v in vector])
            embedding: list[float] | str = floats.tolist()
            if as_base64:
                if sys.byteorder == "big":
                    floats.byteswap()
                embedding = base64.b64encode(floats.tobytes()).decode("ascii")
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        body = {
            "object": "list",
            "data": data,
            "model": call.model.upstream_model or call.model.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return Completion(body=orjson.dumps(body), usage=Usage(prompt_tokens=tokens))

    async def aclose(self) -> None:
        """No connections to close."""
