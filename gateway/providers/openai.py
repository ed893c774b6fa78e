"""Any OpenAI-compatible server (OpenAI, vLLM, Ollama, another gateway): a pass-through.

The request body is the client's, with two changes: `model` becomes the configured
upstream model and, for streams, `stream_options.include_usage` is forced on so every
stream is metered. The answer's events are relayed as the upstream's own bytes: each one
is decoded only to learn what the gateway must know (usage, a finish reason, an error) and
never re-serialised. When the client did not ask for usage, a chunk whose only news is
usage is dropped (OpenAI's `"choices": []`, and LiteLLM's `"choices": [{"index": 0,
"delta": {}}]`), and the usage of a chunk that also carries news (a finish reason, content)
is taken out of it: that chunk alone is re-serialised.

Clients of the Responses and Messages APIs (`UpstreamCall.api`): a Responses request goes
as it came to `/responses` when the provider serves that API (`apis: [chat, responses]`)
and its events pass through as bytes (`PassThroughStream`); otherwise, and always for
Messages, the request is translated to Chat Completions and the answer back
(`gateway.protocols`, `TranslatedStream`).
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from gateway.config import ProviderConfig, Timeouts
from gateway.errors import GatewayError, UpstreamError
from gateway.protocols import Api, translate_answer, translate_request
from gateway.protocols.responses import usage_of as responses_usage
from gateway.providers.answers import fetch_json, malformed, open_event_stream
from gateway.providers.base import Completion, StreamState, UpstreamCall, Usage
from gateway.providers.redact import Redactor
from gateway.providers.requests import Target, UpstreamRequests
from gateway.providers.streams import (
    PassThroughStream,
    SSEUpstream,
    TranslatedStream,
    charged_usage,
)
from gateway.sse import SSEEvent
from gateway.transports.native import NativeRequest

API_PATHS = {
    "chat.completions": "/chat/completions",
    "completions": "/completions",
    "embeddings": "/embeddings",
    "responses": "/responses",
}
_DONE = b"data: [DONE]\n\n"
_DONE_EVENT = _DONE[:-2]


class OpenAIStream(SSEUpstream):
    split_usage = False
    """Send a usage that rides on a chunk with news (a finish reason, content) to a client
    that asked for usage as OpenAI does, in a `"choices": []` chunk after it (Gemini's)."""
    _whole_deltas = True
    """Whether `_client_bytes` may take a read that is one plain delta by itself: only
    where `translate` is this class's own (a subclass's may drop or rewrite such events)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._whole_deltas = cls.translate is OpenAIStream.translate

    def _client_bytes(self, chunk: bytes) -> bytes | None:
        # The usual read when tokens are paced: exactly one one-line event, a plain delta
        # (`_plain_delta`), nothing buffered before it. Its bytes are relayed as they came,
        # as the decoder's and `translate`'s fast paths would relay them, without building
        # the event, the list of events and the list of the client's bytes (about a third
        # of the relay's own CPU per read). The checks are `_plain_delta`'s on the whole
        # read: the prefix and the two line ends add nothing to them. A slice compared and
        # an int looked for (a memchr) where they say the same as `startswith` and `find`:
        # on Python 3.11 those two parse their arguments the general way, ~200 and ~600
        # instructions more here.
        if (
            chunk.endswith(_WHOLE_DELTA_ENDS)
            and chunk[:7] == b"data: {"
            and 10 not in chunk[:-2]  # one line: no LF before the two that end it
            and 13 not in chunk  # no CR (an int: see gateway.sse)
            and self._whole_deltas
            and not self.keep_text
            and not self._decoder.pending
            and (chunk.isascii() or _utf8(chunk))
        ):
            if _counts(chunk):
                self.state.completion_estimate += 1
            return self._redact.scrub(chunk)
        # A read of several such events, or of the stream's end (finish, usage, `[DONE]`:
        # once per stream, and a short stream's only read): split where the events end,
        # each taken as `translate` takes it, without the decoder's event tuples and slices
        # (a third of a 4-event read's CPU).
        if self._whole_deltas and not self.keep_text and not self._decoder.pending:
            events = _one_line_events(chunk)
            if events is not None:
                return self._whole_events(chunk, events)
        return super()._client_bytes(chunk)

    def translate(self, events: list[SSEEvent], out: list[bytes]) -> None:
        # Nearly every event is one token's delta, which tells the gateway nothing but that a
        # token came: those are recognised by their bytes (`_plain_delta`) and relayed without
        # being parsed; every other event (the first, the finish, usage, errors, anything
        # unusual) is parsed. In a saturated relay the parse and walk of each delta (about 5 µs
        # live, a sixth of an event's whole cost) showed as a longer tail of token gaps.
        state = self.state
        fast = not self.keep_text
        for data, _, raw in events:
            if fast and _plain_delta(data):
                if _counts(data):
                    state.completion_estimate += 1
                out.append(raw if raw.endswith(b"\n\n") else b"data: " + data + b"\n\n")
                continue
            if not data:
                continue  # comments and pings: the relay sends its own keep-alives
            if data == b"[DONE]":
                state.done_sent = True
                out.append(_DONE)  # as OpenAI writes it, whatever the upstream's spelling
                continue
            sent = self._parsed(data)
            if sent is None:
                out.append(raw if raw.endswith(b"\n\n") else b"data: " + data + b"\n\n")
            elif sent:
                out.append(sent)

    def _parsed(self, data: bytes) -> bytes | None:
        """Learn what one event that is neither a plain delta nor `[DONE]` says (usage, a
        finish, the completion estimate; an error event raises); what the client gets for
        it: None for its own bytes, b"" for nothing, else the event(s) re-serialised."""
        state = self.state
        try:
            chunk = _loads(data)
        except orjson.JSONDecodeError:
            raise malformed(self.provider, "an event that is not JSON") from None
        if type(chunk) is not dict:
            raise malformed(self.provider, "an event that is not a JSON object")
        error = chunk.get("error")
        if error:
            raise _error_event(self.provider, error)
        usage = chunk.get("usage")
        if usage:
            state.usage = _usage(usage)
        choices = chunk.get("choices")
        if choices and type(choices) is list:
            _scan_choices(choices, state, self.keep_text)
        if usage and not self.include_usage:
            # Usage reaches only a client that asked for it.
            if not choices or (type(choices) is list and _only_usage(choices)):
                return b""
            del chunk["usage"]
            return b"data: " + orjson.dumps(chunk) + b"\n\n"
        if usage and self.split_usage and choices and not _only_usage(choices):
            # OpenAI's shape: the news, then the usage in a chunk of its own.
            del chunk["usage"]
            return (
                b"data: "
                + orjson.dumps(chunk)
                + b"\n\ndata: "
                + orjson.dumps(_usage_chunk(chunk, usage))
                + b"\n\n"
            )
        return None

    def _whole_events(self, chunk: bytes, parts: list[bytes]) -> bytes | None:
        """`_client_bytes` of a read that is whole one-line `data:` events and nothing else,
        `parts` (`_one_line_events`), without the decoder: what `translate` relays and
        learns for them, the read itself when every event goes as it came (a stream's last
        read: the finish, the usage and `[DONE]`; over a fast upstream, several deltas)."""
        out: list[bytes] = []
        whole = True  # every event went as it came, so far: the client's bytes are `chunk`
        state = self.state
        ascii_only = chunk.isascii()
        try:
            for part in parts:
                # `_plain_delta`, on the event with its `data: ` (which it does not change);
                # its `{` an int compared (`startswith` with a start parses its arguments the
                # general way), after the ending that makes the event long enough for it.
                if part.endswith(_DELTA_ENDS) and part[6] == 0x7B and (ascii_only or _utf8(part)):
                    if _counts(part):
                        state.completion_estimate += 1
                    out.append(part)
                    continue
                if part == _DONE_EVENT:
                    state.done_sent = True
                    out.append(part)
                    continue
                sent = self._parsed(part[6:]) if len(part) > 6 else b""
                if sent is None:
                    out.append(part)
                    continue
                whole = False
                if sent:
                    out.append(sent[:-2])
        except GatewayError as exc:
            self._hold_error(exc, bool(out))
            whole = False
        if whole:
            return self._redact.scrub(chunk)
        if not out:
            return None
        return self._redact.scrub(b"\n\n".join(out) + b"\n\n")


_loads = orjson.loads

_DELTA_END = b'"finish_reason":null}]}'
_DELTA_END_NO_USAGE = b'"finish_reason":null}],"usage":null}'
_CONTENT = b'"content":"'
# The `"usage":null` ending tried first (in both tuples): the gateway asks every Chat
# stream for its usage (`include_usage`), and OpenAI then writes `"usage":null` into each
# chunk before the usage's own. Both endings in one `endswith`: its argument parsing costs
# about as much as the comparison, and an event that is not a plain delta fails both.
_DELTA_ENDS = (_DELTA_END_NO_USAGE, _DELTA_END)
_WHOLE_DELTA_ENDS = (_DELTA_END_NO_USAGE + b"\n\n", _DELTA_END + b"\n\n")


def _plain_delta(data: bytes) -> bool:
    """Whether an event is a delta that tells the gateway nothing but that a token came: a
    JSON object in valid UTF-8 that ends as OpenAI-compatible servers end a chunk whose
    choice goes on (`"finish_reason":null}]}`, or with `"usage":null` after it).

    What the gateway reads from a stream still reaches it: a finish reason set, a usage
    object and an error each end their event otherwise (OpenAI puts `usage` after
    `choices`, an error event is `{"error": ...}` alone, and a stream's last choice to
    finish does so in its own chunk), so those events are parsed; a usage report ahead of a
    delta's choices would be missed, but the usage that counts comes in the stream's last
    chunk. Not checked on this path: that the bytes between the braces are valid JSON.
    """
    return data.endswith(_DELTA_ENDS) and data.startswith(b"{") and (data.isascii() or _utf8(data))


def _one_line_events(chunk: bytes) -> list[bytes] | None:
    """A read's events (each its `data: ` line, without the blank line that ends it) when
    it is whole events of one `data: ` line each, `\\n`-ended: what the decoder's own fast
    path takes, and all it would take from this read; else None. Every LF is then half of
    an event's end (none inside an event, no empty event), and each event's end is followed
    by the next one's `data: `."""
    # Slices compared rather than `endswith` and `startswith`, which parse their arguments
    # the general way (as in `_client_bytes`).
    if chunk[-2:] != b"\n\n" or chunk[:6] != b"data: " or 13 in chunk:
        return None
    # Split once, at each LF (a split or count at two bytes, `\n\n`, is CPython's slowest
    # search): the events are every other piece, and what lies between two LFs must be
    # nothing; the ends followed by a `data: ` are all but the last.
    lines = chunk.split(b"\n")
    events = lines[::2]
    if len(lines) % 2 == 0 or any(lines[1::2]) or chunk.count(b"\n\ndata: ") != len(events) - 2:
        return None
    del events[-1]  # what follows the last event's end: nothing
    return events


def _utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def _counts(data: bytes) -> bool:
    """A plain delta that counts towards the completion estimate, as `_scan_choices` counts:
    one with content (not empty), tool calls or reasoning."""
    # `partition` rather than `find`: see `Redactor.scrub` (`rest` is what follows the
    # first `"content":"`; `rest[0]` fails where `data[at + 11]` did, on nothing after it).
    _, content, rest = data.partition(_CONTENT)
    if content and rest[0] != 0x22:  # not `"content":""`
        return True
    return b'"tool_calls"' in data or b'"reasoning_content":"' in data


def _scan_choices(choices: list[Any], state: StreamState, keep_text: bool) -> None:
    for choice in choices:
        if type(choice) is not dict:
            continue
        reason = choice.get("finish_reason")
        if reason:
            state.finished = True
            state.finish_reason = reason if type(reason) is str else "other"
        delta = choice.get("delta")
        if type(delta) is dict:
            content = delta.get("content")
            if content or delta.get("tool_calls") or delta.get("reasoning_content"):
                state.completion_estimate += 1
            if keep_text and type(content) is str:
                state.text.append(content)
        elif isinstance(choice.get("text"), str):  # /v1/completions
            state.completion_estimate += 1
            if keep_text:
                state.text.append(choice["text"])


def _only_usage(choices: list[Any]) -> bool:
    """Whether a usage chunk's choices say nothing else: LiteLLM sends its usage with
    `[{"index": 0, "delta": {}}]` (sometimes `"finish_reason": null` too)."""
    for choice in choices:
        if type(choice) is not dict:
            return False
        if choice.get("delta") or choice.get("text") or choice.get("finish_reason"):
            return False
        if choice.get("logprobs"):
            return False
    return True


def _usage_chunk(chunk: dict[str, Any], usage: Any) -> dict[str, Any]:
    head: dict[str, Any] = {k: chunk[k] for k in ("id", "object", "created", "model") if k in chunk}
    return {**head, "choices": [], "usage": usage}


def _usage(usage: Any) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    # The details looked up here and `_detail` called only where there are some (many
    # servers send none): each call saved is ~700 instructions a stream.
    cached, reasoning = usage.get("prompt_tokens_details"), usage.get("completion_tokens_details")
    # Positional, in the fields' order (no cache writes in Chat's usage): every stream's
    # last read makes one, and by keyword a third of its cost is the keywords'.
    return Usage(
        prompt if isinstance(prompt, int) else 0,
        completion if isinstance(completion, int) else 0,
        _detail(cached, "cached_tokens") if cached else 0,
        0,
        _detail(reasoning, "reasoning_tokens") if reasoning else 0,
    )


def _answer_usage(usage: Any) -> Usage | None:
    """Chat's usage, or the Responses API's (`input_tokens`, `output_tokens`, details)."""
    if isinstance(usage, dict) and "input_tokens" in usage:
        tokens = responses_usage(usage)
        return charged_usage(tokens) if tokens is not None else None
    return _usage(usage)


def _detail(details: Any, name: str) -> int:
    """One count of a usage's `*_details` object; 0 when absent (most providers send none)."""
    if type(details) is not dict:
        return 0
    value = details.get(name)
    return value if type(value) is int else 0


def _error_event(provider: str, error: Any) -> UpstreamError:
    message = error.get("message") if isinstance(error, dict) else error
    text = str(message)[:500] if message else "an error event"
    return UpstreamError(f"provider {provider!r} failed mid-stream: {text}", kind="error_event")


class OpenAIProvider:
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
        self._requests = UpstreamRequests(config, timeouts, auth=self._auth(), transport=transport)
        self._redact = Redactor.for_provider(config)
        # URLs are parsed once, on first use (so a bad base_url fails the request, not the
        # start-up).
        self._urls: dict[tuple[str, str], Target] = {}

    # What a provider of another flavour of the same API (`azure`, `gemini`) changes:
    stream_class: type[OpenAIStream] = OpenAIStream
    """The stream a Chat client's events are read with."""
    translated_class: type[TranslatedStream] = TranslatedStream
    """The stream a Responses or Messages client's translated events are read with."""

    def _auth(self) -> dict[str, str] | None:
        """The credential headers (`Authorization: Bearer KEY`)."""
        return {"authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else None

    def _url(self, path: str, model: str) -> str:
        """The URL of one API route (`API_PATHS`) for an upstream model."""
        return self.config.base_url + API_PATHS[path]

    def _error_body(self, body: bytes) -> bytes:
        """The upstream's error body in OpenAI's shape (already is, here)."""
        return body

    def _answer_body(self, body: bytes, data: dict[str, Any]) -> bytes:
        """A plain answer as OpenAI's (already is, here); may correct `data` in place and
        return it re-serialised."""
        return body

    def _upstream_api(self, call: UpstreamCall) -> Api:
        """The API this call is sent in: the client's when the provider serves it."""
        if call.api == "responses" and "responses" in self.config.apis:
            return "responses"
        return "chat"

    def _request(self, call: UpstreamCall, api: Api = "chat") -> httpx.Request | NativeRequest:
        """The upstream request; a stream's is in bytes over the native transport."""
        target, content = self._body(call, api)
        timeouts = call.model.timeouts
        if call.stream:
            return self._requests.stream(
                target, content, traceparent=call.traceparent, timeouts=timeouts
            )
        return self._requests.build(
            target.url, content, stream=False, traceparent=call.traceparent, timeouts=timeouts
        )

    def _body(self, call: UpstreamCall, api: Api) -> tuple[Target, bytes]:
        """Where the request goes, and its body's bytes."""
        body = translate_request(call.body, call.api, api) if call.api != api else call.body
        body = dict(body)
        model = body["model"] = call.model.upstream_model or call.model.name
        if call.stream and api == "chat":
            options = body.get("stream_options")
            body["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
        path = "responses" if api == "responses" else call.route
        target = self._urls.get((path, model))
        if target is None:
            target = self._urls[path, model] = self._requests.target(self._url(path, model))
        return target, orjson.dumps(body)

    async def open_stream(self, call: UpstreamCall) -> SSEUpstream:
        api = self._upstream_api(call)
        response = await open_event_stream(
            self._transport,
            self._request(call, api),
            self.config.name,
            self._error_body,
            redact=self._redact,
        )
        if call.api == "chat":
            # By position (include_usage, keep_text, max_event_bytes, redact): a class called
            # with keywords gets them in a dict, ~2.3k instructions more per stream.
            return self.stream_class(
                response,
                self.config.name,
                call.include_usage,
                self._keep_text,
                self._max_event_bytes,
                self._redact,
            )
        if call.api == api:
            return PassThroughStream(
                response,
                self.config.name,
                api=api,
                keep_text=self._keep_text,
                max_event_bytes=self._max_event_bytes,
                redact=self._redact,
            )
        return self.translated_class(
            response,
            self.config.name,
            upstream=api,
            client=call.api,
            request=call.body,
            keep_text=self._keep_text,
            max_event_bytes=self._max_event_bytes,
            redact=self._redact,
        )

    async def complete(self, call: UpstreamCall) -> Completion:
        api = self._upstream_api(call)
        headers: dict[str, str] = {}
        target, content = self._body(call, api)
        request = self._requests.build(
            target.url,
            content,
            stream=call.stream,
            traceparent=call.traceparent,
            timeouts=call.model.timeouts,
        )
        body, data = await fetch_json(
            self._transport,
            request,
            self.config.name,
            self._error_body,
            redact=self._redact,
            headers_into=headers,
        )
        body = self._answer_body(body, data)
        if call.api == api:
            usage = _answer_usage(data.get("usage"))
            return Completion(body=body, usage=usage, upstream_headers=headers)
        answer = translate_answer(api, call.api, data, call.body)
        usage = _usage(data.get("usage"))
        return Completion(body=orjson.dumps(answer), usage=usage, upstream_headers=headers)

    async def aclose(self) -> None:
        """The shared transport belongs to the app; nothing of its own to close."""
