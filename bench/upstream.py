"""A fast fake OpenAI-compatible provider for the benchmark, run in its own process.

`python -m bench.upstream --port N` answers `POST /v1/chat/completions` with a stream of
realistic `chat.completion.chunk` events (about 200 bytes each). The model name says what
to stream: `bench-n200-p0` is 200 content chunks with no delay, `bench-n50-p20` is 50
chunks 20 ms apart. Content chunk `i` carries the text ` tok{i}` and the chunk id carries
the request's `user` field, so a client can check order, completeness and that no event
crossed into another stream. The stream ends like OpenAI's: a `finish_reason` chunk, the
usage chunk (when `stream_options.include_usage` is set) and `data: [DONE]`.

The same plans answer `POST /v1/messages` as Anthropic streams them (`message_start`,
a text block of ` tok{i}` deltas, `message_delta` with usage, `message_stop`) and
`POST /v1/responses` as OpenAI's Responses API does (`response.created`, ` tok{i}`
`response.output_text.delta` events, `response.completed` with usage), so the benchmark
can time the gateway's other ingress APIs against their pass-through and translated
upstreams (`bench.run --routes`).

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

from bench.procs import raise_nofile

_MODEL = re.compile(r"bench-n(\d+)-p(\d+)")
_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
)
_COOKIE_TAIL = b"; path=/; domain=.api.openai.com; HttpOnly; Secure; SameSite=None"
_OPENAI_HEAD = (
    # The 25 fields of an api.openai.com streaming answer, in its order and casing, with
    # values of their real shape and length (the two cookies are Cloudflare's).
    b"HTTP/1.1 200 OK\r\n"
    b"Date: Sun, 06 Dec 2026 16:00:00 GMT\r\n"
    b"Content-Type: text/event-stream; charset=utf-8\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"Connection: keep-alive\r\n"
    b"access-control-expose-headers: X-Request-ID\r\n"
    b"openai-organization: user-k2v9q8x1m4n7b3c6z5a0s2d8\r\n"
    b"openai-processing-ms: 187\r\n"
    b"openai-project: proj_Qm3Xv8Kp2Lr7Tn4Wd9Yb6Hs1\r\n"
    b"openai-version: 2020-10-01\r\n"
    b"x-ratelimit-limit-requests: 10000\r\n"
    b"x-ratelimit-limit-tokens: 30000000\r\n"
    b"x-ratelimit-remaining-requests: 9999\r\n"
    b"x-ratelimit-remaining-tokens: 29999975\r\n"
    b"x-ratelimit-reset-requests: 6ms\r\n"
    b"x-ratelimit-reset-tokens: 0s\r\n"
    b"x-request-id: req_7f3a9c1e5b2d4f6a8c0e2b4d6f8a1c3e\r\n"
    b"strict-transport-security: max-age=31536000; includeSubDomains; preload\r\n"
    b"cf-cache-status: DYNAMIC\r\n"
    b"set-cookie: __cf_bm="
    + b"Zx7Qp2Lk9Vm4Nb8Hc3Jd6Fg1Sa5Wr0Ty.Ue7Io2Pa9Sd4Fg8Hj3Kl6Zx1Cv5Bn" * 2
    + b"-1765036800-1.0.1.1-"
    + b"Qw8Er3Ty6Ui1Op4As9Df2Gh7Jk0Lz5Xc8Vb3Nm6" * 2
    + b"; path=/; expires=Sun, 06-Dec-26 16:30:00 GMT; domain=.api.openai.com; HttpOnly;"
    b" Secure; SameSite=None\r\n"
    b"set-cookie: _cfuvid=Hk4Lm9Np2Qr7St1Uv6Wx0Yz3Ab8Cd5Ef.Gh2Ij7Kl1Mn-1765036800123-0.0.1.1-604800000"
    + _COOKIE_TAIL
    + b"\r\n"
    b"X-Content-Type-Options: nosniff\r\n"
    b"Server: cloudflare\r\n"
    b"CF-RAY: 8f1a2b3c4d5e6f70-AMS\r\n"
    b'alt-svc: h3=":443"; ma=86400\r\n'
    b"\r\n"
)
_ANTHROPIC_HEAD = (
    # An api.anthropic.com streaming answer's fields, its rate-limit set included.
    b"HTTP/1.1 200 OK\r\n"
    b"Date: Sun, 06 Dec 2026 16:00:00 GMT\r\n"
    b"Content-Type: text/event-stream; charset=utf-8\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"Connection: keep-alive\r\n"
    b"Cache-Control: no-cache\r\n"
    b"anthropic-ratelimit-requests-limit: 4000\r\n"
    b"anthropic-ratelimit-requests-remaining: 3999\r\n"
    b"anthropic-ratelimit-requests-reset: 2026-12-06T16:00:01Z\r\n"
    b"anthropic-ratelimit-input-tokens-limit: 2000000\r\n"
    b"anthropic-ratelimit-input-tokens-remaining: 1999000\r\n"
    b"anthropic-ratelimit-input-tokens-reset: 2026-12-06T16:00:01Z\r\n"
    b"anthropic-ratelimit-output-tokens-limit: 400000\r\n"
    b"anthropic-ratelimit-output-tokens-remaining: 399000\r\n"
    b"anthropic-ratelimit-output-tokens-reset: 2026-12-06T16:00:01Z\r\n"
    b"anthropic-ratelimit-tokens-limit: 2400000\r\n"
    b"anthropic-ratelimit-tokens-remaining: 2398000\r\n"
    b"anthropic-ratelimit-tokens-reset: 2026-12-06T16:00:01Z\r\n"
    b"request-id: req_011CQ7h3Vx9Kp2Lr7Tn4Wd9Y\r\n"
    b"anthropic-organization-id: 8c3e5a7f-1b2d-4f6a-9c0e-2b4d6f8a1c3e\r\n"
    b"via: 1.1 google\r\n"
    b"cf-cache-status: DYNAMIC\r\n"
    b"X-Robots-Tag: none\r\n"
    b"Server: cloudflare\r\n"
    b"CF-RAY: 8f1a2b3c4d5e6f71-AMS\r\n"
    b"\r\n"
)
HEADS = {"minimal": _HEAD, "openai": _OPENAI_HEAD, "anthropic": _ANTHROPIC_HEAD}
"""`--headers`: what each answer's head holds. `minimal` (3 fields) costs the gateway least;
`openai` and `anthropic` are a real provider's (25 fields), whose cost users pay."""
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


class MessagesPlan:
    """An Anthropic Messages stream of the same shape: ` tok{i}` text deltas."""

    __slots__ = ("head", "n", "pace")

    def __init__(self, stream_id: bytes, model: bytes, n: int, pace: float) -> None:
        self.n = n
        self.pace = pace
        start = {
            "type": "message_start",
            "message": {
                "id": stream_id.decode(),  # a Chat client of it checks `chatcmpl-<id>`
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": model.decode(),
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 12, "output_tokens": 1},
            },
        }
        block = {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "text", "text": ""},
        }
        self.head = _event(b"message_start", start) + _event(b"content_block_start", block)

    def content(self, i: int) -> bytes:
        delta = (
            b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
            b'"delta":{"type":"text_delta","text":" tok%d"}}\n\n' % i
        )
        return _framed(self.head + delta if i == 0 else delta)

    def tail(self) -> bytes:
        usage = {"output_tokens": self.n}
        end = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": usage}
        events = [
            _event(b"content_block_stop", {"type": "content_block_stop", "index": 0}),
            _event(b"message_delta", end),
            _event(b"message_stop", {"type": "message_stop"}),
        ]
        return b"".join(_framed(e) for e in events) + _END


class ResponsesPlan:
    """An OpenAI Responses stream of the same shape: ` tok{i}` output_text deltas."""

    __slots__ = ("id", "model", "n", "pace")

    def __init__(self, stream_id: bytes, model: bytes, n: int, pace: float) -> None:
        self.n = n
        self.pace = pace
        self.id = "resp_" + stream_id.decode()
        self.model = model.decode()

    def _response(self, status: str, output: list[object], usage: object) -> dict[str, object]:
        return {
            "id": self.id,
            "object": "response",
            "created_at": 1700000000,
            "status": status,
            "model": self.model,
            "output": output,
            "usage": usage,
        }

    def content(self, i: int) -> bytes:
        delta = (
            b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
            b'"sequence_number":%d,"item_id":"msg_1","output_index":0,"content_index":0,'
            b'"delta":" tok%d","logprobs":[]}\n\n' % (i + 4, i)
        )
        if i:
            return _framed(delta)
        item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "in_progress"}
        head = [
            (b"response.created", {"response": self._response("in_progress", [], None)}),
            (b"response.in_progress", {"response": self._response("in_progress", [], None)}),
            (b"response.output_item.added", {"output_index": 0, "item": {**item, "content": []}}),
            (
                b"response.content_part.added",
                {
                    "item_id": "msg_1",
                    "output_index": 0,
                    "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": []},
                },
            ),
        ]
        events = [
            _event(name, {"type": name.decode(), "sequence_number": k, **body})
            for k, (name, body) in enumerate(head)
        ]
        return _framed(b"".join(events) + delta)

    def tail(self) -> bytes:
        text = "".join(f" tok{i}" for i in range(self.n))
        item = {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }
        usage = {"input_tokens": 12, "output_tokens": self.n, "total_tokens": self.n + 12}
        done = self._response("completed", [item], usage)
        seq = self.n + 4
        events = [
            _event(
                b"response.output_item.done",
                {
                    "type": "response.output_item.done",
                    "sequence_number": seq,
                    "output_index": 0,
                    "item": item,
                },
            ),
            _event(
                b"response.completed",
                {"type": "response.completed", "sequence_number": seq + 1, "response": done},
            ),
        ]
        return b"".join(_framed(e) for e in events) + _END


def _event(name: bytes, data: object) -> bytes:
    return b"event: " + name + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class UpstreamProtocol(asyncio.Protocol):
    """One client connection: HTTP/1.1 keep-alive, one request at a time."""

    def __init__(self, head: bytes = _HEAD) -> None:
        self._head = head
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
        url = self._url
        if not url.endswith((b"/chat/completions", b"/messages", b"/responses")):
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
        user = request.get("user") or (request.get("metadata") or {}).get("user_id", "anon")
        shape = (str(user).encode(), request["model"].encode())
        n, pace = int(match.group(1)), int(match.group(2)) / 1000
        plan: StreamPlan | MessagesPlan | ResponsesPlan
        if url.endswith(b"/messages"):
            plan = MessagesPlan(*shape, n, pace)
        elif url.endswith(b"/responses"):
            plan = ResponsesPlan(*shape, n, pace)
        else:
            plan = StreamPlan(*shape, n, pace, bool(options.get("include_usage")))
        self._task = asyncio.get_running_loop().create_task(self._stream(transport, plan))

    # --- streaming ----------------------------------------------------------------------

    async def _stream(
        self, transport: asyncio.Transport, plan: StreamPlan | MessagesPlan | ResponsesPlan
    ) -> None:
        loop = asyncio.get_running_loop()
        transport.write(self._head)
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
    parser.add_argument(
        "--headers", choices=sorted(HEADS), default="minimal", help="the answers' head fields"
    )
    args = parser.parse_args()
    raise_nofile()  # thousands of concurrent streams (the scale scenarios)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        head = HEADS[args.headers]
        server = await loop.create_server(
            lambda: UpstreamProtocol(head), args.host, args.port, backlog=4096, reuse_address=True
        )
        print(f"upstream listening on {args.host}:{args.port}", flush=True)
        async with server:
            await server.serve_forever()

    uvloop.run(serve())


if __name__ == "__main__":
    main()
