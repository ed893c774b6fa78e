"""Incremental Server-Sent Events framing: bytes in, whole events out.

Built for the hot path: an upstream read is split into complete events with one `find`
per event in the common case (`\\n\\n`-separated, one `data:` line), and each event keeps
its original bytes so a pass-through provider relays them untouched. CR and CRLF line ends
are handled too. A partial event stays buffered until its end arrives; an event that grows
past `max_event_bytes` without ending is an upstream fault (`SSEError`), never unbounded
memory.

Deliberately not here: `id:` / `retry:` handling (LLM providers do not use them for the
single-shot streams a gateway relays), and decoding JSON.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_LINE_END = re.compile(rb"\r\n|\r|\n")


class SSEError(Exception):
    """The upstream byte stream is not valid SSE (an event without end, not UTF-8)."""


class SSEEvent(NamedTuple):
    # A NamedTuple, not a frozen dataclass: one is built per upstream event, and a tuple
    # costs a third of a frozen dataclass's __init__.

    data: bytes
    """The `data:` lines joined by `\\n`, without the field name; b"" for comment-only events."""
    event: str | None
    """The `event:` field, when given (Anthropic names every event; OpenAI names none)."""
    raw: bytes
    """The event as it came, including its terminating blank line."""


# Bytes are looked for as ints (`13 not in chunk`: no CR, `10`: no LF) where that is the
# whole check: a memchr, several times cheaper than `b"\r" in chunk`, which sets up the
# general substring search for one byte (0.03 against 0.17 µs on a 240-byte read).

_new_event = tuple.__new__
"""Builds an SSEEvent from a tuple without the NamedTuple's Python-level __new__."""


def _parse_block(block: bytes, raw: bytes) -> SSEEvent:
    # Fast path: the one-line `data: ...` event every OpenAI-compatible server sends.
    if block.startswith(b"data: ") and 10 not in block and 13 not in block:
        return SSEEvent(data=block[6:], event=None, raw=raw)
    # And the two-line `event: NAME` / `data: ...` event of the Messages and Responses APIs.
    if block.startswith(b"event: "):
        end = block.find(b"\n")
        if (
            end > 0
            and block.startswith(b"data: ", end + 1)
            and block.find(b"\n", end + 1) < 0
            and 13 not in block
        ):
            try:
                label = block[7:end].decode("utf-8")
            except UnicodeDecodeError:
                raise SSEError("an SSE event name is not valid UTF-8") from None
            return _new_event(SSEEvent, (block[end + 7 :], label, raw))
    data: list[bytes] = []
    event: str | None = None
    for line in _LINE_END.split(block):
        if not line or line.startswith(b":"):
            continue
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            try:
                event = value.decode("utf-8")
            except UnicodeDecodeError:
                raise SSEError("an SSE event name is not valid UTF-8") from None
    return SSEEvent(data=b"\n".join(data), event=event, raw=raw)


class SSEDecoder:
    """Feed upstream reads, get the events they complete."""

    __slots__ = ("_buffer", "max_event_bytes", "pending")

    def __init__(self, max_event_bytes: int = 1024 * 1024) -> None:
        self._buffer = b""
        self.max_event_bytes = max_event_bytes
        self.pending = 0
        """Bytes of an event whose end has not arrived yet. An attribute, not a property:
        the providers' one-event shortcuts check it on every read (a property's call cost
        more than the rest of that check)."""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if (
            not self._buffer
            and chunk.endswith(b"\n\n")
            and chunk[:6] == b"data: "  # a slice compared: `startswith` parses its arguments
            and 10 not in chunk[:-2]  # one line: no LF before the two that end it
            and 13 not in chunk
        ):
            # Fastest path: a read that is exactly one one-line event, which is what a
            # model server's stream looks like when each token is its own network write.
            return [_new_event(SSEEvent, (chunk[6:-2], None, chunk))]
        buffer = self._buffer + chunk if self._buffer else chunk
        events: list[SSEEvent] = []
        start = 0
        if 13 not in buffer:
            while True:
                end = buffer.find(b"\n\n", start)
                if end < 0:
                    break
                # Fast path, inlined: the one-line `data: ...` event every OpenAI-compatible
                # server sends, sliced straight out of the buffer.
                if buffer.startswith(b"data: ", start) and buffer.find(b"\n", start, end) < 0:
                    event = (buffer[start + 6 : end], None, buffer[start : end + 2])
                    events.append(_new_event(SSEEvent, event))
                elif end > start:
                    events.append(_parse_block(buffer[start:end], buffer[start : end + 2]))
                start = end + 2
        else:
            for match in _BOUNDARY.finditer(buffer):
                block = buffer[start : match.start()]
                raw = buffer[start : match.end()]
                start = match.end()
                if block:
                    events.append(_parse_block(block, raw))
        self._buffer = buffer[start:]
        self.pending = len(self._buffer)
        if self.pending > self.max_event_bytes:
            raise SSEError(
                f"an upstream SSE event passed {self.max_event_bytes} bytes without ending"
            )
        return events
