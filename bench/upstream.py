"""A fast fake OpenAI-compatible provider for the benchmark, run in its own process.

`python -m bench.upstream --port N` answers `POST /v1/chat/completions` with a stream of
realistic `chat.completion.chunk` events (about 200 bytes each). The model name says what
to stream: `bench-n200-p0` is 200 content chunks with no delay, `bench-n50-p20` is 50
chunks 20 ms apart. Content chunk `i` carries the text ` tok{i}` and the chunk id carries
the request's `user` field, so a client can check order, completeness and that no event
crossed into another stream. The stream ends like OpenAI's: a `finish_reason` chunk, the
usage chunk (when `stream_options.include_usage` is set) and `data: [DONE]`.

It is built to cost as little CPU as possible, so the relays are what the benchmark
measures: uvloop, a raw `asyncio.Protocol`, httptools' C parser, events formatted from
prebuilt byte templates, one `write()` per event (each event is its own network write, as
from a real model server), pacing on absolute deadlines so delays do not drift.

Deliberately not here: the failure scenarios of `tests/support/fake_upstream.py`
(errors, truncation, stalls); the benchmark measures the happy path.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from typing import cast

import httptools
import orjson
import uvloop

_MODEL = re.compile(r"bench-n(\d+)-p(\d+)")
_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
)
_NOT_FOUND = (
    b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
)
_BAD = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
_DONE = b"data: [DONE]\n\n"
_END = b"0\r\n\r\n"


def chunk_prefix(stream_id: bytes, model: bytes) -> bytes:
    return (
        b'data: {"id":"chatcmpl-' + stream_id + b'","object":"chat.completion.chunk",'
        b'"created":1700000000,"model":"' + model + b'","system_fingerprint":"fp_bench01",'
        b'"choices":[{"index":0,"delta":{'
    )


def _framed(event: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(event), event)


class StreamPlan:
    """The bytes of one answer, built on demand from the request's templates."""

    __slots__ = ("content_tail", "include_usage", "n", "pace", "prefix", "usage_field")

    def __init__(self, stream_id: bytes, model: bytes, n: int, pace: float, usage: bool) -> None:
        self.prefix = chunk_prefix(stream_id, model)
        self.n = n
        self.pace = pace
        self.include_usage = usage
        self.usage_field = b',"usage":null' if usage else b""
        self.content_tail = (
            b'"},"logprobs":null,"finish_reason":null}]' + self.usage_field + b"}\n\n"
        )

    def content(self, i: int) -> bytes:
        role = b'"role":"assistant",' if i == 0 else b""
        return _framed(self.prefix + role + b'"content":" tok%d' % i + self.content_tail)

    def tail(self) -> bytes:
        events = [
            self.prefix
            + b'},"logprobs":null,"finish_reason":"stop"}]'
            + self.usage_field
            + b"}\n\n"
        ]
        if self.include_usage:
            usage = b'{"prompt_tokens":12,"completion_tokens":%d,"total_tokens":%d}' % (
                self.n,
                self.n + 12,
            )
            head = self.prefix.partition(b'"choices":')[0]
            events.append(head + b'"choices":[],"usage":' + usage + b"}\n\n")
        events.append(_DONE)
        return b"".join(_framed(e) for e in events) + _END


class UpstreamProtocol(asyncio.Protocol):
    """One client connection: HTTP/1.1 keep-alive, one request at a time."""

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._body: list[bytes] = []
        self._task: asyncio.Task[None] | None = None
        self._writable: asyncio.Future[None] | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._writable is not None and not self._writable.done():
            self._writable.cancel()

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    # --- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._body = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        transport = self._transport
        if transport is None:
            return
        if not self._url.endswith(b"/chat/completions"):
            transport.write(_NOT_FOUND)
            return
        try:
            request = orjson.loads(b"".join(self._body))
            match = _MODEL.fullmatch(request["model"])
            assert match is not None and request.get("stream") is True
        except (orjson.JSONDecodeError, KeyError, TypeError, AssertionError):
            transport.write(_BAD)
            return
        options = request.get("stream_options") or {}
        plan = StreamPlan(
            str(request.get("user", "anon")).encode(),
            request["model"].encode(),
            int(match.group(1)),
            int(match.group(2)) / 1000,
            bool(options.get("include_usage")),
        )
        self._task = asyncio.get_running_loop().create_task(self._stream(transport, plan))

    # --- streaming ----------------------------------------------------------------------

    async def _stream(self, transport: asyncio.Transport, plan: StreamPlan) -> None:
        loop = asyncio.get_running_loop()
        transport.write(_HEAD)
        start = loop.time()
        for i in range(plan.n):
            if plan.pace and i:
                # Absolute deadlines: a late wake-up does not push every later chunk back.
                delay = start + i * plan.pace - loop.time()
                await asyncio.sleep(delay if delay > 0 else 0)
            elif i:
                await asyncio.sleep(0)  # let other streams write: one network write per event
            if self._writable is not None:
                await self._writable
            transport.write(plan.content(i))
        transport.write(plan.tail())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            UpstreamProtocol, args.host, args.port, backlog=4096, reuse_address=True
        )
        print(f"upstream listening on {args.host}:{args.port}", flush=True)
        async with server:
            await server.serve_forever()

    uvloop.run(serve())


if __name__ == "__main__":
    main()
