"""Translation between the three APIs clients and upstreams speak: OpenAI Chat
Completions (`chat`), OpenAI Responses (`responses`) and Anthropic Messages (`messages`).

Streams go through neutral events (`events`): a decoder per API turns an upstream's SSE
event payloads into them, an encoder per API turns them into the client's SSE bytes.
`StreamTranslator` pairs the two for a relay; `translate_answer` does the same for a
non-streamed answer, `translate_error` for an upstream's error response, and
`translate_request` (`requests`) for the request going up (a 400 naming the field for what
the upstream's API cannot say).

The cost on a translated route is one `orjson.loads` per upstream event plus about one
microsecond (`tests/protocols/bench_translate.py`); no pydantic at run time.

Deliberately not here: HTTP, routing, SSE framing (`gateway.sse`), and relaying
when client and upstream speak the same API (their bytes pass untouched, no decoding).
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import orjson

from gateway.protocols import chat, messages, responses, responses_answer
from gateway.protocols.errors import (
    anthropic_error_body,
    error_from_anthropic,
    error_from_openai,
    openai_error_body,
)
from gateway.protocols.events import DONE, Done, Error, Event, Message
from gateway.protocols.requests import translate_request

__all__ = [
    "APIS",
    "Api",
    "StreamTranslator",
    "answer_from_message",
    "decoder",
    "encoder",
    "message_from_answer",
    "stream_translator",
    "translate_answer",
    "translate_error",
    "translate_request",
]

Api = Literal["chat", "responses", "messages"]
APIS: tuple[Api, ...] = ("chat", "responses", "messages")


class Decoder(Protocol):
    def decode(self, data: bytes, out: list[Event]) -> None:
        """One upstream SSE event's `data` -> the neutral events it says, appended to `out`.
        Never raises: what breaks the API's format becomes an `Error` event (a 502)."""


class Encoder(Protocol):
    def encode(self, event: Event, out: list[bytes]) -> None:
        """One neutral event -> the client's SSE events (whole, framed), appended to `out`."""


def decoder(api: Api) -> Decoder:
    if api == "chat":
        return chat.ChatDecoder()
    if api == "responses":
        return responses.ResponsesDecoder()
    return messages.MessagesDecoder()


def encoder(
    api: Api, *, include_usage: bool = False, request: dict[str, Any] | None = None
) -> Encoder:
    """`include_usage`: a Chat client asked for the usage chunk (`stream_options`);
    `request`: the Responses client's request, whose parameters a Response repeats."""
    if api == "chat":
        return chat.ChatEncoder(include_usage=include_usage)
    if api == "responses":
        return responses.ResponsesEncoder(request)
    return messages.MessagesEncoder()


class StreamTranslator:
    """Upstream SSE event payloads of one API in, the client's SSE bytes of another out.

    `feed` returns the bytes to send for one upstream event (often none, sometimes
    several events' worth) and the neutral events it decoded, so the relay can read usage,
    the finish and errors (`ended` / `failed`) without parsing anything twice.
    """

    __slots__ = ("_decode", "_encode", "ended", "events", "failed")

    def __init__(self, decoder: Decoder, encoder: Encoder) -> None:
        self._decode = decoder.decode
        self._encode = encoder.encode
        self.events: list[Event] = []
        """The neutral events of the last `feed`."""
        self.ended = False
        """The upstream finished (`Done`) or failed (`Error`): nothing more to relay."""
        self.failed = False

    def feed(self, data: bytes) -> bytes:
        if self.ended:
            self.events = []
            return b""  # an upstream that talks after its end is not relayed further
        events: list[Event] = []
        self._decode(data, events)
        self.events = events
        out: list[bytes] = []
        encode = self._encode
        for event in events:
            encode(event, out)
            kind = type(event)
            if kind is Done or kind is Error:
                self.ended = True
                self.failed = kind is Error
                break
        return out[0] if len(out) == 1 else b"".join(out)

    def finish(self) -> bytes:
        """The upstream's answer was whole but its stream ended without its end event (a Chat
        stream with its finish reason and no `[DONE]`): the client's end, unless it was sent."""
        if self.ended:
            return b""
        self.ended = True
        out: list[bytes] = []
        self._encode(DONE, out)
        return b"".join(out)

    def fail(self, error: Error) -> bytes:
        """The stream failed on the gateway's side (idle timeout, the upstream's connection
        dropped, its stream ended without its end event: `truncated`): the client's error
        event, unless the stream already ended."""
        if self.ended:
            return b""
        self.ended = self.failed = True
        out: list[bytes] = []
        self._encode(error, out)
        return b"".join(out)


def stream_translator(
    upstream: Api,
    client: Api,
    *,
    include_usage: bool = False,
    request: dict[str, Any] | None = None,
) -> StreamTranslator:
    return StreamTranslator(
        decoder(upstream), encoder(client, include_usage=include_usage, request=request)
    )


def message_from_answer(api: Api, body: Any) -> Message:
    if api == "chat":
        return chat.message_from_answer(body)
    if api == "responses":
        return responses_answer.message_from_answer(body)
    return messages.message_from_answer(body)


def answer_from_message(
    api: Api, message: Message, request: dict[str, Any] | None = None
) -> dict[str, Any]:
    if api == "chat":
        return chat.answer_from_message(message)
    if api == "responses":
        return responses_answer.answer_from_message(message, request)
    return messages.answer_from_message(message)


def translate_answer(
    upstream: Api, client: Api, body: Any, request: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A non-streamed answer (or error body) of `upstream`'s API in `client`'s API."""
    return answer_from_message(client, message_from_answer(upstream, body), request)


def translate_error(upstream: Api, client: Api, status: int, body: bytes) -> bytes:
    """An upstream's error response body (any bytes) in the client API's error shape; the
    HTTP status stays the upstream's. The upstream's own words pass on when it gave any."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = None
    if payload is None:
        error = Error(status, f"the upstream answered HTTP {status}")
    else:
        read = error_from_anthropic if upstream == "messages" else error_from_openai
        error = read(payload, status)
    if client == "messages":
        return orjson.dumps(anthropic_error_body(status, error.message))
    return orjson.dumps(openai_error_body(status, error.message, code=error.code))
