"""A response head's fields, cut from its bytes once llhttp ended it (`http11.Connection`),
against llhttp's own view of them field by field (httptools' `on_header`, the path it
replaced), and `native.FieldHeaders` against `httpx.Headers` on the same fields.

Each head is fed to a `Connection` (no socket: a stand-in transport, as the event loop
would feed it) whole and cut in two at every byte, with a body after it; the fields it hands
over must be exactly those llhttp reported, in order. The cases are the edges of the split:
repeated and mixed-case names, whitespace around values, empty values, a colon in a value,
bytes past ASCII, informational answers before the head, CR LF before a status line, a head
with no field, and fields at the count and size bounds (and one past each).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import httptools
import httpx
import pytest

from gateway.transports import http11, native
from gateway.transports.errors import MalformedResponse
from tests.transports.stand_ins import StandInPool, StandInWire


class _FieldByField:
    """llhttp's fields as its `on_header` callback reports them (the final head's)."""

    def __init__(self) -> None:
        self.fields: list[tuple[bytes, bytes]] = []
        self.head: list[tuple[bytes, bytes]] | None = None
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        if self.head is None and not 100 <= self.parser.get_status_code() < 200:
            self.head = self.fields
        self.fields = []


def llhttp_fields(head: bytes) -> list[tuple[bytes, bytes]]:
    reader = _FieldByField()
    reader.parser.feed_data(head)
    assert reader.head is not None
    return reader.head


async def _fields_read(pieces: list[bytes]) -> list[tuple[bytes, bytes]]:
    """What `Connection.send` hands over when the answer comes in these reads."""
    conn = http11.Connection(cast(Any, StandInPool()), (b"http", "upstream", 80))
    conn.connection_made(cast(Any, StandInWire()))
    sent = asyncio.ensure_future(conn.send(b"GET / HTTP/1.1\r\nhost: upstream\r\n\r\n", None))
    await asyncio.sleep(0)
    for piece in pieces:
        conn.data_received(piece)
        await asyncio.sleep(0)
    status, fields = await asyncio.wait_for(sent, 1)
    assert status == 200
    return fields


def fields_read(pieces: list[bytes]) -> list[tuple[bytes, bytes]]:
    return asyncio.run(_fields_read(pieces))


def _head(*lines: bytes, start: bytes = b"HTTP/1.1 200 OK") -> bytes:
    return start + b"\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n"


BODY = b"content-length: 5"
"""Each case's last field: the body that follows the head is 5 bytes."""
OK_HEAD = _head(BODY)

HEADS = {
    "repeated-mixed-case": _head(b"Set-Cookie: a=1", b"set-cookie: b=2", b"SET-COOKIE:c=3", BODY),
    "whitespace": _head(b"A:   spaced  ", b"B:\t\ttabbed\t", b"C: \t mixed \t ", BODY),
    "empty-values": _head(b"A:", b"B: ", b"C:\t \t", BODY),
    "colons-in-values": _head(b"Location: http://a:80/b", b"X-Time: 12:00:01", BODY),
    "past-ascii": _head(b"X-Name: caf\xc3\xa9", b"X-Latin: \xe9t\xe9", BODY),
    "tab-inside": _head(b"X-T: a\tb", BODY),
    "no-reason": _head(BODY, start=b"HTTP/1.1 200"),
    "reason-with-colon": _head(b"A: 1", BODY, start=b"HTTP/1.1 200 O:K"),
    "http-1.0": _head(b"A: 1", BODY, b"connection: keep-alive", start=b"HTTP/1.0 200 OK"),
    "crlf-first": b"\r\n\r\n" + _head(b"A: 1", BODY),
    "informational": _head(b"X-Early: 1", start=b"HTTP/1.1 100 Continue")
    + b"\r\n"
    + _head(b"Link: </a>; rel=preload", start=b"HTTP/1.1 103 Early Hints")
    + _head(b"A: 1", BODY),
    "only-the-length": _head(BODY),
    "openai": (
        _head(
            b"Date: Sun, 06 Dec 2026 16:00:00 GMT",
            b"Content-Type: text/event-stream; charset=utf-8",
            b"x-ratelimit-limit-requests: 10000",
            b"x-ratelimit-remaining-requests: 9999",
            b"x-ratelimit-reset-requests: 6ms",
            b"set-cookie: __cf_bm=" + b"x" * 200 + b"; path=/; HttpOnly; Secure",
            b"set-cookie: _cfuvid=y; path=/",
            b'alt-svc: h3=":443"; ma=86400',
            BODY,
        )
    ),
    "256-fields": _head(*[b"x-%d: %d" % (i, i) for i in range(255)], BODY),
    "fields-at-16-KiB": _head(
        b"x-big: " + b"v" * (16 * 1024 - 5),
        b"x-spaced:     " + b"w" * (16 * 1024 - 9) + b" ",
        b"n" * (16 * 1024 - 1) + b": 1",
        BODY,
    ),
}


@pytest.mark.parametrize("head", HEADS.values(), ids=HEADS.keys())
def test_the_fields_are_llhttps_whole_and_cut_at_every_byte(head: bytes) -> None:
    expected = llhttp_fields(head)
    answer = head + b"hello"
    # Every byte of the small heads; every 61st of the big ones (and their last ones).
    step = 1 if len(answer) < 4096 else 61
    cuts = sorted({*range(1, len(answer), step), *range(len(answer) - 8, len(answer))})

    async def scenario() -> None:
        assert await _fields_read([answer]) == expected
        for cut in cuts:
            assert await _fields_read([answer[:cut], answer[cut:]]) == expected, cut

    asyncio.run(scenario())


def test_fields_come_in_as_many_reads_as_bytes() -> None:
    head = HEADS["informational"]
    assert fields_read([bytes([b]) for b in head + b"hello"]) == llhttp_fields(head)


@pytest.mark.parametrize(
    ("lines", "says"),
    [
        ([b"x-%d: 1" % i for i in range(257)], "more than 256 header fields"),
        ([b"x-big: " + b"v" * (16 * 1024 - 4)], "a header field over 16384 bytes"),
        ([b"x-big:" + b" " * 100 + b"v" * (16 * 1024 - 4)], "a header field over 16384 bytes"),
        ([b"n" * (16 * 1024) + b": 1"], "a header field over 16384 bytes"),
    ],
    ids=["257-fields", "long-value", "long-value-after-spaces", "long-name"],
)
def test_a_head_one_past_a_field_bound_fails_as_it_did_field_by_field(
    lines: list[bytes], says: str
) -> None:
    for head in (_head(*lines, BODY), _head(*lines, start=b"HTTP/1.1 100 Continue") + OK_HEAD):
        with pytest.raises(MalformedResponse, match=says):
            fields_read([head + b"hello"])


def test_an_answer_that_began_before_its_request_fails_as_malformed() -> None:
    async def scenario() -> None:
        conn = http11.Connection(cast(Any, StandInPool()), (b"http", "upstream", 80))
        wire = StandInWire()
        conn.connection_made(cast(Any, wire))
        conn.data_received(b"HTTP/1.1 200 OK\r\nx-unasked: 1\r\n")  # before any request
        sent = asyncio.ensure_future(conn.send(b"GET / HTTP/1.1\r\nhost: u\r\n\r\n", None))
        await asyncio.sleep(0)
        conn.data_received(b"content-length: 5\r\n\r\nhello")
        with pytest.raises(MalformedResponse, match="began before its request"):
            await asyncio.wait_for(sent, 1)
        assert wire.closed

    asyncio.run(scenario())


def test_trailers_are_not_fields() -> None:
    head = _head(b"Transfer-Encoding: chunked", b"A: 1")
    answer = head + b"5\r\nhello\r\n0\r\nx-trailer: 1\r\n\r\n"
    assert fields_read([answer]) == [(b"Transfer-Encoding", b"chunked"), (b"A", b"1")]


# --- FieldHeaders against httpx.Headers -------------------------------------------------------

FIELD_SETS = {
    "ascii": [
        (b"Content-Type", b"text/event-stream"),
        (b"Set-Cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"X-RateLimit-Remaining-Requests", b"9999"),
        (b"x-empty", b""),
        (b"x-trailing", b"1 \t"),
    ],
    "utf-8": [(b"X-Name", b"caf\xc3\xa9"), (b"x-name", b"ok"), (b"A", b"1")],
    "latin-1": [(b"X-Name", b"\xe9t\xe9"), (b"X-Other", b"caf\xc3\xa9")],
    "none": [],
}
NAMES = [
    "content-type",
    "Content-Type",
    "SET-COOKIE",
    "x-ratelimit-remaining-requests",
    "x-empty",
    "x-trailing",
    "x-name",
    "X-Other",
    "a",
    "absent",
    "content-length",
]


@pytest.mark.parametrize("fields", FIELD_SETS.values(), ids=FIELD_SETS.keys())
def test_field_headers_read_as_httpx_headers(fields: list[tuple[bytes, bytes]]) -> None:
    ours = native.FieldHeaders([b"%s: %s" % pair for pair in fields])
    theirs = httpx.Headers(fields)
    assert ours.fields == fields
    for name in NAMES:
        assert ours.get(name) == theirs.get(name), name
        assert ours.get(name, "dflt") == theirs.get(name, "dflt"), name
        assert (name in ours) == (name in theirs), name
        if name in theirs:
            assert ours[name] == theirs[name]
        else:
            with pytest.raises(KeyError):
                ours[name]
        raw = ours.raw(name.lower().encode())
        expected = theirs.get(name)
        assert raw == (None if expected is None else expected.encode(theirs.encoding)), name
    assert len(ours) == len(theirs)
    assert list(ours) == list(theirs)
    assert dict(ours.items()) == dict(theirs.items())


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nA: 1\nB: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\nA: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nA: 1\rB: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nA: 1\r\n folded\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nA: 1\r\n\tfolded\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nA : 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nA: x\x01y\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nA: 1\r\n\n",
    ],
    ids=[
        "bare-lf-in-fields",
        "bare-lf-after-status",
        "bare-cr",
        "obs-fold",
        "obs-fold-tab",
        "space-before-colon",
        "empty-name",
        "control-byte",
        "bare-lf-end",
    ],
)
def test_llhttp_refuses_every_head_the_split_would_read_wrong(head: bytes) -> None:
    # The split relies on llhttp's strictness (httptools' defaults): a release that let
    # any of these through would have the fields read differently from llhttp's view.
    with pytest.raises(MalformedResponse):
        fields_read([head + b"hello"])


def test_the_fields_of_some_prefixes_read_as_httpx_headers_reads_them() -> None:
    fields = [
        (b"X-RateLimit-Remaining-Requests", b"9999"),
        (b"x-ratelimit-reset-requests", b"6ms "),  # trailing whitespace kept
        (b"x-request-id", b"req_1"),  # an x- name of no prefix
        (b"anthropic-ratelimit-tokens-limit", b"1"),
        (b"Anthropic-Ratelimit-Tokens-Limit", b"2"),  # repeated: joined
        (b"alt-svc", b"h3"),
        (b"content-type", b"text/event-stream"),
        (b"x-ratelimit-odd", b"caf\xc3\xa9"),  # past ASCII: the whole head reads as UTF-8
    ]
    prefixes = (b"x-ratelimit-", b"anthropic-ratelimit-")
    found = native.FieldHeaders([b"%s: %s" % pair for pair in fields]).starting_with(prefixes)
    theirs = httpx.Headers(fields)
    expected = {
        key: theirs[key] for key in theirs if key.encode().startswith(prefixes)
    }  # fmt: skip
    assert found == expected
    assert len(found) == 4 and found["anthropic-ratelimit-tokens-limit"] == "1, 2"
    assert native.FieldHeaders([b"A: 1", b"x-b: 2"]).starting_with(prefixes) == {}
