"""A read that is one per-token delta by itself (the usual read when tokens are paced) is
relayed without the decoder (`_client_bytes`' shortcut in the Chat and the Messages /
Responses pass-throughs). What the client gets and what the gateway learns must be what
the same events give read all at once, which takes the general path."""

from __future__ import annotations

import itertools

import httpx
import pytest

from gateway.errors import GatewayError
from gateway.protocols import Api
from gateway.providers.azure import AzureStream
from gateway.providers.base import StreamState
from gateway.providers.gemini import GeminiStream
from gateway.providers.openai import OpenAIStream, _one_line_events
from gateway.providers.redact import Redactor
from gateway.providers.streams import PassThroughStream, SSEUpstream
from gateway.sse import SSEEvent
from tests.providers.test_openai_deltas import PARSED, PLAIN

SECRET = "sk-upstream-secret-1234"
RESPONSE = httpx.Response(200, stream=httpx.ByteStream(b""))


def chat(**kwargs: object) -> OpenAIStream:
    return OpenAIStream(RESPONSE, "p", include_usage=False, redact=Redactor([SECRET]), **kwargs)  # type: ignore[arg-type]


def passthrough(api: Api) -> PassThroughStream:
    return PassThroughStream(RESPONSE, "p", api=api, redact=Redactor([SECRET]))


def event(name: str, data: str) -> bytes:
    return f"event: {name}\ndata: {data}\n\n".encode()


def text(value: str) -> bytes:
    return event(
        "content_block_delta",
        '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"'
        + value
        + '"}}',
    )


MESSAGES = [
    event(
        "message_start",
        '{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant",'
        '"model":"m","content":[],"stop_reason":null,"usage":{"input_tokens":5,"output_tokens":1}}}',
    ),
    event(
        "content_block_start",
        '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}',
    ),
    text(" tok"),
    text("héllo 世界"),
    text(SECRET),  # an echoed credential is scrubbed on the shortcut too
    event("content_block_stop", '{"type":"content_block_stop","index":0}'),
    event(
        "message_delta",
        '{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":3}}',
    ),
    event("message_stop", '{"type":"message_stop"}'),
    text(" after the end"),  # not relayed
]
RESPONSES = [
    event(
        "response.output_text.delta",
        f'{{"type":"response.output_text.delta","sequence_number":{i},"item_id":"msg_1",'
        f'"output_index":0,"content_index":0,"delta":"{delta}"}}',
    )
    for i, delta in enumerate([" tok", "héllo 世界", SECRET])
]
CHAT = [b"data: " + data + b"\n\n" for data in [*PLAIN, *PARSED[:3]]] + [
    b'data: {"choices":[{"delta":{"content":"%s"},"finish_reason":null}]}\n\n' % SECRET.encode(),
    b"data: [DONE]\n\n",
]


def learnt(upstream: SSEUpstream) -> tuple[object, ...]:
    state: StreamState = upstream.state
    extra = (
        (upstream._sequence, upstream._relayed, upstream._ended)
        if isinstance(upstream, PassThroughStream)
        else ()
    )
    return (
        state.completion_estimate,
        state.usage,
        state.finish_reason,
        state.finished,
        state.done_sent,
        *extra,
    )


def relayed(upstream: SSEUpstream, reads: list[bytes]) -> bytes:
    return b"".join(data for read in reads if (data := upstream._client_bytes(read)) is not None)


@pytest.mark.parametrize(
    ("make", "reads"),
    [
        (chat, CHAT),
        (lambda: passthrough("messages"), MESSAGES),
        (lambda: passthrough("responses"), RESPONSES),
    ],
)
def test_one_event_per_read_relays_and_learns_what_one_read_of_all_does(
    make: object, reads: list[bytes]
) -> None:
    assert callable(make)
    each, whole = make(), make()
    each_out = relayed(each, reads)
    assert each_out == relayed(whole, [b"".join(reads)])
    assert learnt(each) == learnt(whole)
    assert SECRET.encode() not in each_out and b"[redacted]" in each_out


class _NoDecoder:
    """A decoder that fails the test if a read reaches it."""

    pending = 0

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        raise AssertionError(f"decoded: {chunk!r}")


def test_a_read_of_one_plain_delta_skips_the_decoder() -> None:
    upstream = chat()
    upstream._decoder = _NoDecoder()  # type: ignore[assignment]
    for data in PLAIN:
        read = b"data: " + data + b"\n\n"
        assert upstream._client_bytes(read) == read
    for api, read in (("messages", MESSAGES[2]), ("responses", RESPONSES[0])):
        stream = passthrough(api)  # type: ignore[arg-type]
        stream._decoder = _NoDecoder()  # type: ignore[assignment]
        assert stream._client_bytes(read) == read


def test_what_the_shortcut_cannot_take_goes_to_the_decoder() -> None:
    upstream = chat()
    upstream._decoder = _NoDecoder()  # type: ignore[assignment]
    line = b"data: " + PLAIN[1]
    for read in (
        line + b"\r\n\r\n",  # other line ends
        line + b"\n\n" + line + b"\n\n" + line,  # the next event not whole
        line + b"\n\n\n\n" + line + b"\n\n",  # an empty event between
        line + b"\n\n\n" + line + b"\n\n",  # a stray line end
        line + b"\n" + line + b"\n\n",  # an event of two lines
        line + b"\n\n: ping\n\n",  # a comment
        b"event: x\n" + line + b"\n\n",  # a named one
        line + b"\n\ndata:" + PLAIN[1] + b"\n\n",  # `data:` without its space
    ):
        with pytest.raises(AssertionError, match="decoded"):
            upstream._client_bytes(read)
    kept = chat(keep_text=True)  # the text is read out of each event
    kept._decoder = _NoDecoder()  # type: ignore[assignment]
    with pytest.raises(AssertionError, match="decoded"):
        kept._client_bytes(line + b"\n\n")


def test_a_subclass_that_translates_otherwise_never_takes_the_shortcut() -> None:
    assert OpenAIStream._whole_deltas
    assert not AzureStream._whole_deltas and not GeminiStream._whole_deltas
    response = RESPONSE
    for stream in (
        AzureStream(response, "p", include_usage=False),
        GeminiStream(response, "p", include_usage=False),
    ):
        stream._decoder = _NoDecoder()  # type: ignore[assignment]
        for read in (
            b"data: " + PLAIN[1] + b"\n\n",
            b"data: " + PARSED[0] + b"\n\ndata: [DONE]\n\n",
        ):
            with pytest.raises(AssertionError, match="decoded"):
                stream._client_bytes(read)


def general(upstream: OpenAIStream, read: bytes) -> bytes | None:
    """The decoder and `translate`: what every read took before the shortcuts."""
    return SSEUpstream._client_bytes(upstream, read)


def outcome(upstream: OpenAIStream, read: bytes, way: object) -> tuple[object, ...]:
    """What one read relays, raises or holds back, and what the stream learnt from it."""
    assert callable(way)
    try:
        sent, raised = way(upstream, read), None
    except GatewayError as exc:
        sent, raised = None, repr(exc)
    return sent, raised, repr(upstream._pending_error), learnt(upstream)


def lines(*events: bytes) -> bytes:
    return b"".join(b"data: " + data + b"\n\n" for data in events)


ERROR = PARSED[4]
USAGE_NEWS = b'{"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":4}}'
WHOLE = [
    lines(PLAIN[0], PARSED[0], PARSED[2], b"[DONE]"),  # a short stream in one read
    lines(PARSED[0], PARSED[2], b"[DONE]"),  # a stream's last read
    lines(*PLAIN),  # a fast upstream's deltas
    lines(PARSED[0]),  # one event, parsed
    lines(b"[DONE]"),
    lines(PARSED[2]),  # usage only: nothing for a client that did not ask
    lines(PLAIN[1], USAGE_NEWS, b"[DONE]"),  # usage taken out of a chunk with news
    lines(PLAIN[1], ERROR, PLAIN[1]),  # an error after a delta: the delta, then the error
    lines(ERROR, PLAIN[1]),  # an error first: raised
    lines(PARSED[2], ERROR),  # an error after a dropped event: raised
    lines(PLAIN[1], PARSED[6]),  # not UTF-8 (parsed: not JSON)
    lines(PLAIN[4], PLAIN[1]),  # UTF-8 beyond ASCII
    lines(PLAIN[1], b"", PLAIN[1]),  # `data: ` with nothing: dropped
    lines(
        PLAIN[1], b'{"choices":[{"delta":{"content":"%s"},"finish_reason":null}]}' % SECRET.encode()
    ),
    lines(b"[1,2]", PLAIN[1]),  # not an object
    lines(PLAIN[1], b'["x","finish_reason":null}]}'),  # a delta's end, not an object's start
]


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("read", WHOLE)
def test_a_read_of_whole_one_line_events_relays_and_learns_what_the_decoder_does(
    read: bytes, include_usage: bool
) -> None:
    fast = (
        chat()
        if not include_usage
        else OpenAIStream(RESPONSE, "p", include_usage=True, redact=Redactor([SECRET]))
    )
    slow = (
        chat()
        if not include_usage
        else OpenAIStream(RESPONSE, "p", include_usage=True, redact=Redactor([SECRET]))
    )
    fast._decoder = _NoDecoder()  # type: ignore[assignment]
    assert outcome(fast, read, OpenAIStream._client_bytes) == outcome(slow, read, general)


def test_a_read_whose_events_all_go_as_they_came_is_relayed_as_it_came() -> None:
    read = lines(PLAIN[0], PARSED[0], b"[DONE]")
    assert chat()._client_bytes(read) is read


def _one_line_events_by_every_end(chunk: bytes) -> bool:
    """`_one_line_events` as first written: every `\\n\\n` counted."""
    if not (chunk.endswith(b"\n\n") and chunk.startswith(b"data: ")) or 13 in chunk:
        return False
    events = chunk.count(b"\n\n")
    return chunk.count(10) == 2 * events and chunk.count(b"\n\ndata: ") == events - 1


def test_whole_one_line_events_are_told_as_by_counting_every_end() -> None:
    # Every read of up to 6 pieces out of the bytes that decide it, and the WHOLE reads.
    pieces = [b"data: ", b"x", b"\n", b"\n\n", b"\n\ndata: ", b"\r", b"data: x\n\n", b"event: e\n"]
    reads = [*WHOLE, b"", b"\n\n", b"data: \n\n"]
    for size in range(1, 7):
        reads += [b"".join(p) for p in itertools.product(pieces, repeat=size)]
    for read in reads:
        events = _one_line_events(read)
        assert (events is not None) == _one_line_events_by_every_end(read), read
        if events is not None:
            assert events == read.split(b"\n\n")[:-1], read
