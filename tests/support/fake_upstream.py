"""A fake LLM provider on a real socket: OpenAI and Anthropic formats, scripted by model name.

It stands in for the paid providers only. It is a small HTTP/1.1 server on asyncio streams
(keep-alive, chunked bodies) running in its own thread, so sync and async clients alike can
talk to it, and it sees exactly what a provider would see: every request, and the moment a
connection is closed under a stream.

The behaviour is chosen by the request's model, query-string style:
`text?n=30&pace_ms=20&ttft_ms=0` streams 30 tokens 20 ms apart. Scenarios: text, tools,
midstream_error, truncate, stall, html, status (with code=500), garbage.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson


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


def parse_model(model: str) -> tuple[str, dict[str, str]]:
    name, _, query = model.partition("?")
    return name, dict(parse_qsl(query))


def text_tokens(n: int) -> list[str]:
    return [f"tok{i} " for i in range(n)]


def tool_arguments() -> dict[str, Any]:
    return {"city": "Paris", "unit": "celsius", "days": [1, 2, 3], "note": 'say "hi"'}


class FakeUpstream:
    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self.open_streams = 0

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
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._server = loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0, limit=2**20)
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
                data = orjson.loads(body) if body else {}
                seen = Seen(path=path, headers=headers, body=data, started=time.monotonic())
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

    async def _answer(
        self, seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        model = str(seen.body.get("model", "text"))
        scenario, params = parse_model(model)
        anthropic = seen.path.startswith("/v1/messages")
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
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n"
        )
        await writer.drain()
        gone = asyncio.get_running_loop().create_task(reader.read(1))
        events = (
            self._anthropic_events(seen, scenario, params)
            if anthropic
            else self._openai_events(seen, scenario, params)
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
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return True
        finally:
            self.open_streams -= 1
            seen.ended = time.monotonic()
            if not gone.done():
                gone.cancel()

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
        yield chunk({}, finish)
        if usage_wanted:
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
            return {
                "object": "list",
                "model": seen.body.get("model"),
                "data": [
                    {"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                    for i in range(len(items))
                ],
                "usage": {"prompt_tokens": 5, "total_tokens": 5},
            }
        text = "".join(text_tokens(n))
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
                    "usage": {"input_tokens": 11, "output_tokens": 1},
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
            yield ev(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
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
                        "index": 0,
                        "delta": {"type": "text_delta", "text": tok},
                    },
                )
            yield ev("content_block_stop", {"type": "content_block_stop", "index": 0})
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


class _Marker:
    """Scripted pauses and hang-ups inside an event sequence."""


_STALL = _Marker()
_CLOSE = _Marker()


if __name__ == "__main__":  # pragma: no cover - manual use: python -m tests.support.fake_upstream
    with FakeUpstream() as fake:
        print(fake.url, flush=True)
        threading.Event().wait()
