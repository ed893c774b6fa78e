"""The OpenAI pass-through's two ways through an event: plain deltas recognised by their
bytes, everything else parsed. Both must relay the same bytes and learn the same things
(finish, usage, errors, the completion estimate) from a stream."""

from __future__ import annotations

import httpx
import orjson
import pytest

from gateway.errors import UpstreamError
from gateway.providers.base import Usage
from gateway.providers.openai import OpenAIStream, _plain_delta, _usage
from gateway.sse import SSEDecoder

HEAD = b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",'


def chunk(choices: str, tail: str = ',"usage":null') -> bytes:
    return HEAD + b'"choices":[' + choices.encode() + b"]" + tail.encode() + b"}"


def delta(body: str, finish: str = "null", index: int = 0) -> str:
    return f'{{"index":{index},"delta":{{{body}}},"logprobs":null,"finish_reason":{finish}}}'


PLAIN = [
    chunk(delta('"role":"assistant","content":""')),
    chunk(delta('"content":" tok"')),
    chunk(delta('"content":" tok"'), tail=""),  # servers that send no usage field
    chunk(delta('"content":"\\"quoted\\" \\"error\\" \\"usage\\":{}"')),
    chunk(delta('"content":"héllo, 世界 👋"')),
    chunk(delta('"content":null,"tool_calls":[{"index":0,"function":{"arguments":"{\\"a\\""}}]')),
    chunk(delta('"reasoning_content":"hmm"')),
    chunk(delta("")),
]
PARSED = [
    chunk(delta('"content":"!"', finish='"stop"')),
    chunk(delta("", finish='"length"'), tail=""),
    chunk("", tail=',"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}'),
    chunk(delta('"content":"x"'), tail=',"usage":{"prompt_tokens":1,"completion_tokens":1}'),
    b'{"error":{"message":"overloaded","type":"server_error"}}',
    b"[DONE]",
    chunk(delta('"content":"XX"')).replace(b"XX", b"\xff\xfe"),  # not UTF-8
]


def stream(keep_text: bool) -> OpenAIStream:
    response = httpx.Response(200, stream=httpx.ByteStream(b""))
    return OpenAIStream(response, "p", include_usage=True, keep_text=keep_text)


def relay(events: list[bytes], keep_text: bool) -> tuple[OpenAIStream, bytes, Exception | None]:
    """Translate the events one read at a time; what was relayed, and the error if any."""
    upstream = stream(keep_text)
    decoder = SSEDecoder()
    out: list[bytes] = []
    try:
        for data in events:
            upstream.translate(decoder.feed(b"data: " + data + b"\n\n"), out)
    except UpstreamError as exc:
        return upstream, b"".join(out), exc
    return upstream, b"".join(out), None


@pytest.mark.parametrize("event", PLAIN)
def test_plain_deltas_take_the_byte_path(event: bytes) -> None:
    assert _plain_delta(event)
    orjson.loads(event)  # the corpus itself is valid JSON


@pytest.mark.parametrize("event", PARSED)
def test_everything_else_is_parsed(event: bytes) -> None:
    assert not _plain_delta(event)


@pytest.mark.parametrize("events", [PLAIN, PLAIN + PARSED[:3] + [b"[DONE]"], PARSED[2:4]])
def test_both_paths_relay_the_same_bytes_and_learn_the_same(events: list[bytes]) -> None:
    fast, fast_out, fast_error = relay(events, keep_text=False)
    slow, slow_out, slow_error = relay(events, keep_text=True)  # keep_text parses every event
    assert fast_out == slow_out
    assert repr(fast_error) == repr(slow_error)
    assert fast.state.completion_estimate == slow.state.completion_estimate
    assert fast.state.finished == slow.state.finished
    assert fast.state.usage == slow.state.usage
    assert fast.state.done_sent == slow.state.done_sent


def test_an_error_or_broken_bytes_mid_stream_still_end_it() -> None:
    for bad, says in ((PARSED[4], "overloaded"), (PARSED[6], "not JSON")):
        _, out, error = relay([PLAIN[1], bad, PLAIN[1]], keep_text=False)
        assert error is not None and says in str(error)
        assert out == b"data: " + PLAIN[1] + b"\n\n"  # what came before the fault, relayed


def test_counting_matches_the_parsed_count() -> None:
    upstream, _, _ = relay(PLAIN, keep_text=False)
    # content " tok" x2, the quoted one, the unicode one, tool calls, reasoning: 6 of 8
    assert upstream.state.completion_estimate == 6


def relay_to(events: list[bytes], *, include_usage: bool) -> tuple[OpenAIStream, bytes]:
    response = httpx.Response(200, stream=httpx.ByteStream(b""))
    upstream = OpenAIStream(response, "p", include_usage=include_usage)
    decoder = SSEDecoder()
    out: list[bytes] = []
    for data in events:
        upstream.translate(decoder.feed(b"data: " + data + b"\n\n"), out)
    return upstream, b"".join(out)


USAGE = ',"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}'
LITELLM_USAGE = [
    chunk('{"index":0,"delta":{}}', tail=USAGE),
    chunk('{"index":0,"delta":{},"finish_reason":null}', tail=USAGE),
    chunk('{"index":0,"text":"","logprobs":null,"finish_reason":null}', tail=USAGE),
]


@pytest.mark.parametrize("event", LITELLM_USAGE)
def test_a_chunk_whose_only_news_is_usage_reaches_only_a_client_that_asked(event: bytes) -> None:
    quiet, out = relay_to([event], include_usage=False)
    assert out == b""
    assert quiet.state.usage is not None and quiet.state.usage.completion_tokens == 7
    asked, out = relay_to([event], include_usage=True)
    assert out == b"data: " + event + b"\n\n"
    assert asked.state.usage == quiet.state.usage


def test_usage_riding_on_news_is_taken_out_for_a_client_that_did_not_ask() -> None:
    for event in (
        chunk(delta("", finish='"stop"'), tail=USAGE),
        chunk(delta('"content":"x"'), tail=USAGE),
    ):
        upstream, out = relay_to([event], include_usage=False)
        sent = orjson.loads(out.removeprefix(b"data: "))
        assert "usage" not in sent
        assert sent["choices"] == orjson.loads(event)["choices"]
        assert upstream.state.usage is not None and upstream.state.usage.prompt_tokens == 5
        _, out = relay_to([event], include_usage=True)
        assert out == b"data: " + event + b"\n\n"  # asked: the upstream's own bytes


@pytest.mark.parametrize(
    "done", [b"data:[DONE]\n\n", b": bye\ndata: [DONE]\n\n", b"data: [DONE]\n\n"]
)
def test_the_end_is_relayed_as_openai_writes_it(done: bytes) -> None:
    upstream = stream(keep_text=False)
    assert upstream._client_bytes(done) == b"data: [DONE]\n\n"
    assert upstream.state.done_sent


def test_a_chat_usage_lands_in_each_field_as_by_keyword() -> None:
    # `_usage` builds its Usage positionally: each count must land in its own field.
    usage = {
        "prompt_tokens": 11,
        "completion_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 5},
        "completion_tokens_details": {"reasoning_tokens": 3},
    }
    assert _usage(usage) == Usage(
        prompt_tokens=11, completion_tokens=7, cached_tokens=5, reasoning_tokens=3
    )
    assert _usage({"prompt_tokens": "x", "completion_tokens": None}) == Usage()


@pytest.mark.parametrize("details", [None, {}, [], 0, "x", {"cached_tokens": "5"}, [5]])
def test_chat_usage_details_that_say_nothing_count_nothing(details: object) -> None:
    # `_detail` is asked only about details that are there: absent, empty or not an
    # object, each count is 0 (the other count unaffected).
    usage = {
        "prompt_tokens": 11,
        "completion_tokens": 7,
        "prompt_tokens_details": details,
        "completion_tokens_details": {"reasoning_tokens": 3},
    }
    assert _usage(usage) == Usage(prompt_tokens=11, completion_tokens=7, reasoning_tokens=3)
    usage["prompt_tokens_details"] = {"cached_tokens": 5}
    usage["completion_tokens_details"] = details
    assert _usage(usage) == Usage(prompt_tokens=11, completion_tokens=7, cached_tokens=5)
