"""SSE framing: events split anywhere, every line ending, bounded buffering."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.sse import SSEDecoder, SSEError

STREAM = (
    b'data: {"a": 1}\n\n'
    b"event: ping\ndata: {}\n\n"
    b": keep-alive\n\n"
    b"data: line1\ndata: line2\n\n"
    b"data: [DONE]\n\n"
)


def decode_all(chunks: list[bytes]) -> list[tuple[bytes, str | None]]:
    decoder = SSEDecoder()
    events = []
    for chunk in chunks:
        events += [(e.data, e.event) for e in decoder.feed(chunk)]
    assert decoder.pending == 0
    return events


EXPECTED = [
    (b'{"a": 1}', None),
    (b"{}", "ping"),
    (b"", None),
    (b"line1\nline2", None),
    (b"[DONE]", None),
]


def test_whole_stream() -> None:
    assert decode_all([STREAM]) == EXPECTED


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_split_gives_the_same_events(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    chunks = [STREAM[a:b] for a, b in zip([0, *points], [*points, len(STREAM)], strict=True)]
    assert decode_all(chunks) == EXPECTED


@pytest.mark.parametrize("newline", [b"\r\n", b"\r"])
def test_cr_line_endings(newline: bytes) -> None:
    stream = STREAM.replace(b"\n", newline)
    assert decode_all([stream[:7], stream[7:]]) == EXPECTED


def test_raw_bytes_are_kept_for_pass_through() -> None:
    events = SSEDecoder().feed(b'data: {"x":1}\n\ndata: {"y":2}\n\n')
    assert [e.raw for e in events] == [b'data: {"x":1}\n\n', b'data: {"y":2}\n\n']


def test_an_event_that_never_ends_is_refused_not_buffered_forever() -> None:
    decoder = SSEDecoder(max_event_bytes=1000)
    decoder.feed(b"data: " + b"x" * 900)
    with pytest.raises(SSEError):
        decoder.feed(b"x" * 200)


@pytest.mark.parametrize(
    "block",
    [
        b"event: content_block_delta\ndata: {}",
        b"event:  spaced\ndata: a:b",
        b"event: \ndata: ",
        b"event: x\ndata:  two spaces",
        b"event: x\ndata: one\ndata: two",
        b"event: x\ndata:no-space",
        b"event: x\n: a comment",
    ],
)
def test_two_line_events_read_as_the_general_parse_reads_them(block: bytes) -> None:
    # CR line ends take the general parse; LF ones the two-line fast path where it applies.
    [fast] = SSEDecoder().feed(block + b"\n\n")
    [general] = SSEDecoder().feed(block.replace(b"\n", b"\r") + b"\r\r")
    assert (fast.data, fast.event) == (general.data, general.event)
    assert fast.raw == block + b"\n\n"


def test_an_event_name_not_in_utf8_is_refused_on_the_fast_path_too() -> None:
    with pytest.raises(SSEError):
        SSEDecoder().feed(b"event: \xff\ndata: {}\n\n")


def test_pending_counts_the_bytes_of_an_event_not_ended_yet() -> None:
    decoder = SSEDecoder()
    assert decoder.pending == 0
    decoder.feed(b'data: {"a": 1}\n\ndata: {"b"')
    assert decoder.pending == len(b'data: {"b"')
    decoder.feed(b": 2}\n")
    assert decoder.pending == len(b'data: {"b": 2}\n')
    assert decoder.feed(b"\n") == [(b'{"b": 2}', None, b'data: {"b": 2}\n\n')]
    assert decoder.pending == 0
