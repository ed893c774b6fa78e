"""A fake LLM provider on a real socket: OpenAI and Anthropic formats, scripted by model name.

It stands in for the paid providers only. It is a small HTTP/1.1 server on asyncio streams
(keep-alive, chunked bodies) running in its own thread, so sync and async clients alike can
talk to it, and it sees exactly what a provider would see: every request, and the moment a
connection is closed under a stream.

The behaviour is chosen by the request's model, query-string style:
`text?n=30&pace_ms=20&ttft_ms=0` streams 30 tokens 20 ms apart. Scenarios: text, tools,
midstream_error, truncate, stall, html, status (with code=500), garbage, echokey (see
`_echo_key`); and the hostile ones of `HOSTILE_SCENARIOS` (see `_hostile`). Any stream
takes `hold=1` (the body is held open after the last event until the client closes;
`hold=cut`: the connection closes there, without the body's end) and
the OpenAI ones `usage=litellm|finish` (LiteLLM's usage chunk, or usage on the finish).
`cached=N&reasoning=M` (OpenAI: usage details) and `cached=N&cache_write=M` (Anthropic:
cache reads and writes, beside the 11 plain input tokens) report cache and reasoning tokens.
`reasoning` on a Responses path is a reasoning model's answer written by hand in OpenAI's
format (`tests/support/fake_responses.py`; `reasoning=M` its reasoning tokens, `stall_s=S`
seconds of silent reasoning after its reasoning item opened); on Chat it
is the text scenario (OpenAI's Chat API streams no reasoning, only its token count).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ssl
import struct
import threading
import time
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl, quote

import orjson

from gateway.protocols import stream_translator, translate_answer
from gateway.sse import SSEDecoder
from tests.support.fake_responses import reasoning_answer, reasoning_events


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    started: float
    ended: float | None = None
    """When the answer finished being written, or the client closed the connection."""
    disconnected: bool = False
    """The client closed the connection before the answer was complete."""
    chunks_sent: int = 0
    query: str = ""
    """The request target's query, for fakes that take it off `path` (`fake_clouds`)."""
    raw: bytes = b""
    """The request body as its bytes."""


def _as_responses(chat_events: Any, request: dict[str, Any]) -> Any:
    """The Chat scenario's events as an upstream serving the Responses API sends them (its
    events written by the gateway's own encoder: the tests of a Responses pass-through check
    that these bytes arrive untouched, not how they were made)."""
    translator = stream_translator("chat", "responses", request=request)
    frames = SSEDecoder(1 << 20)
    for event in chat_events:
        if event is _CLOSE or event is _STALL:
            yield event
            continue
        out = b"".join(translator.feed(e.data) for e in frames.feed(event) if e.data)
        if out:
            yield out


def _usage_details(params: dict[str, str]) -> dict[str, Any]:
    """OpenAI's usage details, when the scenario asks for them (`cached=`, `reasoning=`)."""
    details: dict[str, Any] = {}
    if "cached" in params:
        details["prompt_tokens_details"] = {"cached_tokens": int(params["cached"])}
    if "reasoning" in params:
        details["completion_tokens_details"] = {"reasoning_tokens": int(params["reasoning"])}
    return details


def _cache_usage(params: dict[str, str]) -> dict[str, int]:
    """Anthropic's cache counts, when the scenario asks for them."""
    usage = {}
    if "cached" in params:
        usage["cache_read_input_tokens"] = int(params["cached"])
    if "cache_write" in params:
        usage["cache_creation_input_tokens"] = int(params["cache_write"])
    return usage


def parse_model(model: str) -> tuple[str, dict[str, str]]:
    name, _, query = model.partition("?")
    return name, dict(parse_qsl(query))


def text_tokens(n: int) -> list[str]:
    return [f"tok{i} " for i in range(n)]


def tool_arguments() -> dict[str, Any]:
    return {"city": "Paris", "unit": "celsius", "days": [1, 2, 3], "note": 'say "hi"'}


class FakeUpstream:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        """A server-side context: the upstream speaks https (tests/support/tls.py)."""
        self.seen: list[Seen] = []
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self.open_streams = 0
        self.fail_next = 0
        """The next this many requests are answered `fail_status` (with `retry_after`)."""
        self.fail_status = 429
        self.retry_after: str | None = None
        self.fail_headers: dict[str, str] = {}
        """More headers of those failures (`x-ratelimit-*`, say)."""

    # --- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> FakeUpstream:
        self._thread = threading.Thread(target=self._run, name="fake-upstream", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake upstream did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._server = loop.run_until_complete(
            asyncio.start_server(
                self._handle, "127.0.0.1", self.port, limit=2**20, ssl=self.tls, reuse_address=True
            )
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            self._server.close()
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    def wait_for(self, predicate: Any, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.01)
        return bool(predicate())

    # --- HTTP ---------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                _method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, _, v = line.partition(":")
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if path == "/_seen":
                    self._write_full(writer, 200, self._seen_json(), "application/json")
                    await writer.drain()
                    continue
                data = orjson.loads(body) if body else {}
                seen = Seen(
                    path=path, headers=headers, body=data, started=time.monotonic(), raw=body
                )
                self.seen.append(seen)
                keep = await self._answer(seen, reader, writer)
                if not keep:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _seen_json(self) -> bytes:
        """`GET /_seen` (a fake's own route, for tests across processes): every request's
        path and its start and end as unix times."""
        shift = time.time() - time.monotonic()
        return orjson.dumps(
            [
                {
                    "path": s.path,
                    "started": s.started + shift,
                    "ended": None if s.ended is None else s.ended + shift,
                }
                for s in self.seen
            ]
        )

    async def _answer(
        self, seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        if self.fail_next > 0:
            self.fail_next -= 1
            extra = (
                b""
                if self.retry_after is None
                else b"retry-after: %s\r\n" % (self.retry_after.encode())
            ) + b"".join(
                b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in self.fail_headers.items()
            )
            body = orjson.dumps({"error": {"message": "fake", "type": "rate_limit_error"}})
            writer.write(
                b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\n%scontent-length: %d"
                b"\r\n\r\n%s" % (self.fail_status, extra, len(body), body)
            )
            await writer.drain()
            seen.ended = time.monotonic()
            return True
        model = str(seen.body.get("model", "text"))
        scenario, params = parse_model(model)
        anthropic = seen.path.startswith("/v1/messages")
        if scenario in HOSTILE_SCENARIOS:
            return await self._hostile(seen, scenario, params, anthropic, reader, writer)
        if scenario == "echokey":
            return await self._echo_key(seen, params, anthropic, writer)
        if scenario == "status":
            code = int(params.get("code", "500"))
            if anthropic:
                err = {"type": "error", "error": {"type": "api_error", "message": f"fake {code}"}}
            else:
                err = {
                    "error": {
                        "message": f"fake {code}",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                }
            self._write_full(writer, code, orjson.dumps(err), "application/json")
            await writer.drain()
            seen.ended = time.monotonic()
            return True
        if scenario == "html":
            self._write_full(writer, 200, b"<html><body>Bad gateway</body></html>", "text/html")
            await writer.drain()
            return True
        if not seen.body.get("stream"):
            body = self._complete(seen, scenario, params, anthropic)
            await asyncio.sleep(float(params.get("ttft_ms", "0")) / 1000)
            self._write_full(writer, 200, orjson.dumps(body), "application/json")
            await writer.drain()
            seen.ended = time.monotonic()
            return True
        return await self._stream(seen, scenario, params, anthropic, reader, writer)

    @staticmethod
    def _write_full(writer: asyncio.StreamWriter, code: int, body: bytes, ctype: str) -> None:
        writer.write(
            f"HTTP/1.1 {code} X\r\ncontent-type: {ctype}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
            + body
        )

    async def _stream(
        self,
        seen: Seen,
        scenario: str,
        params: dict[str, str],
        anthropic: bool,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        writer.write(_SSE_HEAD)
        await writer.drain()
        gone = asyncio.get_running_loop().create_task(reader.read(1))
        events = (
            self._anthropic_events(seen, scenario, params)
            if anthropic
            else self._openai_events(seen, scenario, params)
        )
        if seen.path.endswith("/responses"):
            events = (
                reasoning_events(
                    seen.body,
                    text_tokens(int(params.get("n", "12"))),
                    int(params.get("reasoning", "0")),
                    _STALL if "stall_s" in params else None,
                )
                if scenario == "reasoning"
                else _as_responses(events, seen.body)
            )
        ttft = float(params.get("ttft_ms", "0")) / 1000
        pace = float(params.get("pace_ms", "0")) / 1000
        self.open_streams += 1
        try:
            first = True
            for event in events:
                if event is _STALL:
                    delay = float(params.get("stall_s", "60"))
                else:
                    delay = ttft if first else pace
                first = False
                if delay:
                    done, _ = await asyncio.wait({gone}, timeout=delay)
                    if done:
                        seen.disconnected = True
                        return False
                elif gone.done():
                    seen.disconnected = True
                    return False
                if event is _CLOSE:
                    return False  # truncate: close the connection without finishing the body
                if event is _STALL:
                    continue
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                seen.chunks_sent += 1
                try:
                    await writer.drain()
                except ConnectionError:
                    seen.disconnected = True
                    return False
            if params.get("hold") == "cut":
                return False  # the whole answer is out, then the connection drops mid-body
            if params.get("hold"):
                # The whole answer is out, the body never ends: until the client hangs up.
                await asyncio.wait({gone}, timeout=float(params.get("stall_s", "60")))
                seen.disconnected = gone.done()
                return False
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            # The watcher may already hold the first byte of the client's next request on
            # this connection; then the connection cannot be reused.
            return not gone.done()
        finally:
            self.open_streams -= 1
            seen.ended = time.monotonic()
            if not gone.done():
                gone.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await gone
            elif not gone.cancelled():
                gone.exception()  # a reset while watching: retrieved, so asyncio stays quiet

    # --- OpenAI format ------------------------------------------------------------------

    def _openai_events(self, seen: Seen, scenario: str, params: dict[str, str]) -> Any:
        n = int(params.get("n", "12"))
        base = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": seen.body.get("model"),
        }
        completions = seen.path.endswith("/completions") and "chat" not in seen.path

        def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> bytes:
            if completions:
                choice: dict[str, Any] = {
                    "index": 0,
                    "text": (delta or {}).get("content", ""),
                    "finish_reason": finish,
                }
            else:
                choice = {"index": 0, "delta": delta or {}, "finish_reason": finish}
            return b"data: " + orjson.dumps({**base, "choices": [choice], **extra}) + b"\n\n"

        usage_wanted = bool((seen.body.get("stream_options") or {}).get("include_usage"))
        usage_wanted |= seen.path.endswith("/responses")  # always reported there
        shape = params.get("usage", "")
        report = {"prompt_tokens": 11, "completion_tokens": 0, "total_tokens": 11}
        yield chunk({"role": "assistant", "content": ""})
        if scenario == "tools":
            args = orjson.dumps(tool_arguments()).decode()
            yield chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ]
                }
            )
            for i in range(0, len(args), 7):
                yield chunk(
                    {"tool_calls": [{"index": 0, "function": {"arguments": args[i : i + 7]}}]}
                )
            finish = "tool_calls"
            count = len(args) // 7 + 1
        else:
            if scenario == "thinking":  # reasoning before the answer (DeepSeek's, vLLM's field)
                yield chunk({"reasoning_content": "Let me "})
                yield chunk({"reasoning_content": "think."})
            tokens = text_tokens(n)
            for i, tok in enumerate(tokens):
                if scenario == "midstream_error" and i == int(params.get("at", "5")):
                    yield b'data: {"error": {"message": "fake provider exploded", "type": "server_error"}}\n\n'
                    return
                if scenario == "truncate" and i == int(params.get("at", "5")):
                    yield _CLOSE
                    return
                if scenario == "stall" and i == int(params.get("at", "3")):
                    yield _STALL
                if scenario == "garbage" and i == int(params.get("at", "3")):
                    yield b"data: {not json\n\n"
                yield chunk({"content": tok})
            finish = "stop"
            count = n
        report.update(completion_tokens=count, total_tokens=11 + count)
        if shape == "finish" and usage_wanted:  # usage on the finish chunk, none after it
            yield chunk({}, finish, usage=report)
            yield b"data: [DONE]\n\n"
            return
        yield chunk({}, finish)
        if shape == "litellm" and usage_wanted:  # LiteLLM's usage chunk: an empty delta
            yield chunk({}, None, usage=report)
        elif usage_wanted:
            yield (
                b"data: "
                + orjson.dumps(
                    {
                        **base,
                        "choices": [],
                        "usage": {
                            "prompt_tokens": 11,
                            "completion_tokens": count,
                            "total_tokens": 11 + count,
                            **_usage_details(params),
                        },
                    }
                )
                + b"\n\n"
            )
        yield b"data: [DONE]\n\n"

    def _complete(self, seen: Seen, scenario: str, params: dict[str, str], anthropic: bool) -> Any:
        n = int(params.get("n", "12"))
        if seen.path.endswith("/embeddings"):
            inputs = seen.body.get("input")
            items = inputs if isinstance(inputs, list) else [inputs]
            vector = [0.5, -0.25, 0.125]  # exact in float32: both forms say the same
            embedding: Any = vector
            if seen.body.get("encoding_format") == "base64":  # as OpenAI: float32, LE
                embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            return {
                "object": "list",
                "model": seen.body.get("model"),
                "data": [
                    {"object": "embedding", "index": i, "embedding": embedding}
                    for i in range(len(items))
                ],
                "usage": {"prompt_tokens": 5, "total_tokens": 5},
            }
        text = "".join(text_tokens(n))
        if seen.path.endswith("/count_tokens"):
            return {"input_tokens": 42}
        if seen.path.endswith("/responses") and scenario == "reasoning":
            return reasoning_answer(seen.body, text_tokens(n), int(params.get("reasoning", "0")))
        if seen.path.endswith("/responses"):
            chat = self._complete(
                replace(seen, path="/v1/chat/completions"), scenario, params, False
            )
            return translate_answer("chat", "responses", chat, seen.body)
        if anthropic:
            content: list[dict[str, Any]] = [{"type": "text", "text": text}]
            stop = "end_turn"
            if scenario == "tools":
                content = [
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": tool_arguments(),
                    }
                ]
                stop = "tool_use"
            return {
                "id": "msg_fake",
                "type": "message",
                "role": "assistant",
                "model": seen.body.get("model"),
                "content": content,
                "stop_reason": stop,
                "stop_sequence": None,
                "usage": {"input_tokens": 11, "output_tokens": n},
            }
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 1,
            "model": seen.body.get("model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 11, "completion_tokens": n, "total_tokens": 11 + n},
        }

    async def _echo_key(
        self, seen: Seen, params: dict[str, str], anthropic: bool, writer: asyncio.StreamWriter
    ) -> bool:
        """An upstream that echoes the credentials it received, as some do in "invalid key"
        messages: every `authorization`, `x-api-key` and `x-secret-*` header value, as sent
        and URL-encoded. `code=N` answers that status (an error body in the request's
        format); without it, a stream says them in a delta and then in an error event, a
        plain answer in its content (Azure's `api-key` too). `esc=slash|u`: the JSON escapes `/` as `\\/`, or the
        `s` of `sk-` as `\\u0073`."""
        creds = [
            v
            for k, v in seen.headers.items()
            if k in ("authorization", "x-api-key", "api-key") or k.startswith("x-secret-")
        ]
        said = "Incorrect API key provided: " + ", ".join(
            f"{c} (see https://example.invalid/keys?key={quote(c, safe='')})" for c in creds
        )
        code = int(params.get("code", "200"))
        stream = bool(seen.body.get("stream"))
        if code != 200:
            kind = "authentication_error" if anthropic else "invalid_request_error"
            err: dict[str, Any] = {"type": kind, "message": said}
            body: Any = {"type": "error", "error": err} if anthropic else {"error": err}
            ctype = "application/json"
        elif not stream:
            body = self._complete(seen, "text", {"n": "2"}, anthropic)
            if anthropic:
                body["content"][0]["text"] = said
            else:
                body["choices"][0]["message"]["content"] = said
            ctype = "application/json"
        else:
            events = list(
                self._anthropic_events(seen, "midstream_error", {"at": "2"})
                if anthropic
                else self._openai_events(seen, "midstream_error", {"at": "2"})
            )
            # The delta before the error says the credentials, and so does the error.
            events[-2] = events[-2].replace(b"tok1 ", orjson.dumps(said)[1:-1])
            events[-1] = events[-1].replace(
                b"fake provider exploded" if not anthropic else b"Overloaded",
                orjson.dumps(said)[1:-1],
            )
            writer.write(_SSE_HEAD)
            await self._write_chunks(writer, [_escape(e, params) for e in events])
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            seen.ended = time.monotonic()
            return True
        self._write_full(writer, code, _escape(orjson.dumps(body), params), ctype)
        await writer.drain()
        seen.ended = time.monotonic()
        return True

    # --- Anthropic format ---------------------------------------------------------------

    def _anthropic_events(self, seen: Seen, scenario: str, params: dict[str, str]) -> Any:
        n = int(params.get("n", "12"))

        def ev(name: str, data: dict[str, Any]) -> bytes:
            return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

        yield ev(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_fake",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": seen.body.get("model"),
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 11, "output_tokens": 1, **_cache_usage(params)},
                },
            },
        )
        yield ev("ping", {"type": "ping"})
        if scenario == "tools":
            yield ev(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            )
            yield ev(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": "Checking."},
                },
            )
            yield ev("content_block_stop", {"type": "content_block_stop", "index": 0})
            yield ev(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 1,
                    "content_block": {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": {},
                    },
                },
            )
            args = orjson.dumps(tool_arguments()).decode()
            for i in range(0, len(args), 9):
                yield ev(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 1,
                        "delta": {"type": "input_json_delta", "partial_json": args[i : i + 9]},
                    },
                )
            yield ev("content_block_stop", {"type": "content_block_stop", "index": 1})
            stop, out = "tool_use", 20
        else:
            first = 0
            if scenario == "thinking":  # a thinking block (with its signature) before the text
                first = 1
                yield ev(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "thinking", "thinking": "", "signature": ""},
                    },
                )
                for delta in (
                    {"type": "thinking_delta", "thinking": "Let me "},
                    {"type": "thinking_delta", "thinking": "think."},
                    {"type": "signature_delta", "signature": "sig-fake"},
                ):
                    yield ev(
                        "content_block_delta",
                        {"type": "content_block_delta", "index": 0, "delta": delta},
                    )
                yield ev("content_block_stop", {"type": "content_block_stop", "index": 0})
            yield ev(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": first,
                    "content_block": {"type": "text", "text": ""},
                },
            )
            for i, tok in enumerate(text_tokens(n)):
                if scenario == "midstream_error" and i == int(params.get("at", "5")):
                    yield ev(
                        "error",
                        {
                            "type": "error",
                            "error": {"type": "overloaded_error", "message": "Overloaded"},
                        },
                    )
                    return
                if scenario == "truncate" and i == int(params.get("at", "5")):
                    yield _CLOSE
                    return
                yield ev(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": first,
                        "delta": {"type": "text_delta", "text": tok},
                    },
                )
            yield ev("content_block_stop", {"type": "content_block_stop", "index": first})
            stop, out = "end_turn", n
        yield ev(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": out},
            },
        )
        yield ev("message_stop", {"type": "message_stop"})

    # --- hostile upstreams (tests/hostile) -------------------------------------------------

    async def _hostile(
        self,
        seen: Seen,
        scenario: str,
        params: dict[str, str],
        anthropic: bool,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """A provider that breaks the protocol, in either format.

        `at=N` first sends N well-formed stream events (the text scenario's), so the fault
        comes after the gateway's first byte; `at=0` (the default) puts it before. Returns
        whether the connection may be kept alive.
        """
        stream = bool(seen.body.get("stream"))
        try:
            if scenario == "bigerror":
                self._big_error(writer, params, anthropic)
            elif scenario == "hugejson":
                size = int(params.get("kb", "10240")) * 1024
                body = self._complete(seen, "text", {"n": "1"}, anthropic)
                if anthropic:
                    body["content"] = [{"type": "text", "text": "y" * size}]
                else:
                    body["choices"][0]["message"]["content"] = "y" * size
                self._write_full(writer, 200, orjson.dumps(body), "application/json")
            elif scenario == "hangup":
                return await self._hangup(seen, params, anthropic, stream, writer)
            elif scenario == "liechunk" and not stream:
                body = orjson.dumps(self._complete(seen, "text", {"n": "3"}, anthropic))
                head = (
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"transfer-encoding: chunked\r\n\r\n"
                )
                await self._lie(seen, params, reader, writer, head, body)
                return False
            elif not stream:
                # Answers that are not a chat.completion at all, with a JSON content type.
                broken = {
                    "notobject": b"[1, 2, 3]",
                    "badjson": b'{"id": "chatcmpl-fake", "choices": [',
                    "badutf8": b'{"id": "chatcmpl-\xff\xfe", "choices": []}',
                }.get(scenario, b"null")
                self._write_full(writer, 200, broken, "application/json")
            else:
                return await self._hostile_stream(seen, scenario, params, anthropic, reader, writer)
            await writer.drain()
            return True
        except ConnectionError:
            seen.disconnected = True
            return False
        finally:
            seen.ended = time.monotonic()

    @staticmethod
    def _big_error(writer: asyncio.StreamWriter, params: dict[str, str], anthropic: bool) -> None:
        """A 4xx/5xx whose body is megabytes: a JSON error with a huge message, or junk."""
        code = int(params.get("code", "500"))
        size = int(params.get("kb", "4096")) * 1024
        if params.get("shape", "json") == "json":
            message = "x" * size
            err: dict[str, Any] = (
                {"type": "error", "error": {"type": "api_error", "message": message}}
                if anthropic
                else {"error": {"message": message, "type": "server_error", "param": None}}
            )
            FakeUpstream._write_full(writer, code, orjson.dumps(err), "application/json")
        else:
            FakeUpstream._write_full(writer, code, b"<html>" + b"E" * size, "text/html")

    def _good_events(self, seen: Seen, params: dict[str, str], anthropic: bool) -> list[bytes]:
        text = {"n": params.get("n", "12")}
        events = (
            self._anthropic_events(seen, "text", text)
            if anthropic
            else self._openai_events(seen, "text", text)
        )
        return list(events)

    @staticmethod
    async def _write_chunks(writer: asyncio.StreamWriter, chunks: list[bytes]) -> None:
        for chunk in chunks:
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()

    @staticmethod
    async def _wait_gone(seen: Seen, reader: asyncio.StreamReader, wait_s: float) -> None:
        """Hold the connection open, silent, until the client closes it or `wait_s` passed."""
        try:
            if await asyncio.wait_for(reader.read(1), wait_s) == b"":
                seen.disconnected = True
        except ConnectionError:
            # A reset is a close too: a client that closes with our bytes still unread in
            # its buffer makes the kernel send RST instead of FIN.
            seen.disconnected = True
        except TimeoutError:
            pass

    async def _lie(
        self,
        seen: Seen,
        params: dict[str, str],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        head: bytes,
        payload: bytes,
    ) -> None:
        """`head` (response headers, or b"" when sent already), then one chunk of a chunked
        body whose framing lies (`mode`), then the end of it. With `together=1` the lie goes
        out in the same write as the headers, so the client meets it while parsing them."""
        mode = params.get("mode", "short")
        if mode == "short":  # declares more bytes than it sends, then hangs up
            lie = b"%x\r\n%s" % (len(payload) + 4096, payload)
        elif mode == "badhex":  # a chunk size that is not hexadecimal
            lie = b"zz\r\n%s\r\n0\r\n\r\n" % payload
        else:  # "long": sends more bytes than the chunk size says
            lie = b"%x\r\n%s\r\n0\r\n\r\n" % (4, payload)
        if params.get("together"):
            writer.write(head + lie)
        else:
            writer.write(head)
            await writer.drain()
            await asyncio.sleep(0.05)  # the headers reach the client on their own
            writer.write(lie)
        await writer.drain()
        if mode != "short":
            # The framing error is the gateway's to notice: it should hang up.
            await self._wait_gone(seen, reader, float(params.get("stall_s", "10")))

    async def _hangup(
        self,
        seen: Seen,
        params: dict[str, str],
        anthropic: bool,
        stream: bool,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Headers, then (after `at` events) the TCP connection closes; with `when=request`,
        it closes before any byte of an answer."""
        if params.get("when") == "request":
            return False
        if not stream:
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n"
            )
            await writer.drain()
            return False
        writer.write(_SSE_HEAD)
        at = int(params.get("at", "0"))
        await self._write_chunks(writer, self._good_events(seen, params, anthropic)[:at])
        return False

    async def _hostile_stream(
        self,
        seen: Seen,
        scenario: str,
        params: dict[str, str],
        anthropic: bool,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        at = int(params.get("at", "0"))
        good = self._good_events(seen, params, anthropic)
        name = b"event: content_block_delta\n" if anthropic else b""
        # Half an event: nothing of it may reach the client.
        half = name + b'data: {"choices": ['
        if scenario == "liechunk" and params.get("together"):
            await self._lie(seen, params, reader, writer, _SSE_HEAD, half)
            return False
        writer.write(_SSE_HEAD)
        await self._write_chunks(writer, good[:at])
        if at:
            # Let the good events reach the gateway on their own read, before the fault.
            await asyncio.sleep(0.05)
        rest = good[at:]
        if scenario == "singlelf":
            # Events separated by a single newline: one endless event by the SSE rules.
            await self._write_chunks(writer, [e[:-1] for e in rest])
        elif scenario == "oversize":
            # One event that grows past any sane size and never ends.
            await self._write_chunks(writer, [name + b'data: {"x": "'])
            size = int(params.get("kb", "1100")) * 1024
            piece = b"a" * 65536
            for _ in range(size // len(piece)):
                await self._write_chunks(writer, [piece])
            await self._wait_gone(seen, reader, float(params.get("stall_s", "10")))
            return False
        elif scenario == "liechunk":
            await self._lie(seen, params, reader, writer, b"", half)
            return False
        elif scenario == "hush":
            # Silence, connection open: a provider that stopped sending without closing.
            await self._wait_gone(seen, reader, float(params.get("stall_s", "30")))
            if seen.disconnected:
                return False
            await self._write_chunks(writer, rest)
        else:
            bad = {
                "notobject": b"data: [1, 2, 3]\n\n",
                "badjson": b"data: {not json\n\n",
                "badutf8": b'data: {"choices": [{"index": 0, "delta": {"content": "\xff\xfe"}}]}\n\n',
                "badname": b"event: \xff\xfe\ndata: {}\n\n",
            }[scenario]
            await self._write_chunks(
                writer, [(b"" if scenario == "badname" else name) + bad, *rest]
            )
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True


HOSTILE_SCENARIOS = frozenset(
    {
        "bigerror",  # code=500&kb=4096&shape=json|text: a status with a body of megabytes
        "hugejson",  # kb=10240: a valid non-stream answer of megabytes
        "hangup",  # at=N: headers (and N events), then the TCP connection closes; when=request
        "notobject",  # a JSON answer / stream event that is not an object
        "badjson",  # an answer / stream event that is not JSON
        "badutf8",  # non-UTF-8 bytes inside the JSON of an answer / stream event
        "badname",  # stream: an SSE `event:` name that is not UTF-8
        "singlelf",  # stream: events separated by one newline, never a blank line
        "oversize",  # kb=1100: stream: one event that grows past 1 MiB and never ends
        "liechunk",  # mode=short|badhex|long, together=1: chunked encoding that lies
        "hush",  # stall_s=S: stream: silence with the connection open, then the rest
    }
)
"""Scenarios of `_hostile`; all take `at=N` (well-formed events sent before the fault)."""


def _escape(data: bytes, params: dict[str, str]) -> bytes:
    esc = params.get("esc")
    if esc == "slash":
        return data.replace(b"/", b"\\/")
    if esc == "u":
        return data.replace(b"sk-", b"\\u0073k-")
    return data


_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n"
)


class _Marker:
    """Scripted pauses and hang-ups inside an event sequence."""


_STALL = _Marker()
_CLOSE = _Marker()


def main() -> None:
    """`python -m tests.support.fake_upstream [--port N] [--fail-next N --fail-status S
    --retry-after V]`: a fake in a process of its own (tests SIGKILL it); prints its URL."""
    parser = argparse.ArgumentParser(prog="python -m tests.support.fake_upstream")
    parser.add_argument("--port", type=int, default=0, help="0: a free one")
    parser.add_argument("--fail-next", type=int, default=0, help="answer this many with an error")
    parser.add_argument("--fail-status", type=int, default=429)
    parser.add_argument("--retry-after", default=None, help="the errors' retry-after header")
    args = parser.parse_args()
    fake = FakeUpstream()
    fake.port = args.port
    fake.fail_next, fake.fail_status, fake.retry_after = (
        args.fail_next,
        args.fail_status,
        args.retry_after,
    )
    with fake:
        print(fake.url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":  # pragma: no cover - run as a process by tests/routing
    main()
