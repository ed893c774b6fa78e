"""The raw floor: the least a Python relay on uvloop can do per request, as a reference.

`python -m bench.rawfloor --port N --upstream URL` is an `asyncio.Protocol` pair on uvloop
with httptools, no framework: it parses a request, takes an idle upstream connection (or
opens one), writes the request with the client's content type and authorization, and writes
every byte the upstream sends to the client as it comes (the upstream's own head and chunked
body, verbatim), pausing the upstream while the client's buffer is full. No ASGI, no auth,
no limits, no metrics, no log, no header checks: it is not a relay anyone should run, but it
says how much of a burst's cost is the interpreter and the event loop alone (what the
gateway's set-up can never go below) and so whether a target against nginx is reachable from
Python at all.

Like `bench.floor` it listens with a backlog of 2048 (uvicorn's default, so the gateway's),
and like the gateway keeps at most 256 idle upstream connections.

`--rungs` adds, cumulatively, the least of what the gateway does per request, so that a run
of several shows what each costs in a burst (the bench's `--rawfloor-ladder`):

- `parse`: the body parsed (orjson), its model and `stream` checked, `stream_options`
  set for usage and the body written again; the bearer key hashed (sha256) and looked up; a
  request id drawn.
- `task`: the request handled by a task that waits for the upstream connection and for the
  response's head (a future), as an `async` gateway does, instead of callbacks alone.
- `redis`: the gateway's own `RedisLimiter` admits each request against the config's key
  (`--config`: the bench's gateway config) before the upstream call, and settles it when
  the response ends.
- `sse`: every upstream read split into its `data:` events, the last event's usage parsed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
from typing import Any
from urllib.parse import urlsplit

import httptools
import orjson
import uvloop

from bench.procs import UPSTREAM_IDLE

RUNGS = ("parse", "task", "redis", "sse")
MAX_IDLE = UPSTREAM_IDLE
"""Idle upstream connections kept, as the other relays (the rest closed)."""


class Upstream(asyncio.Protocol):
    """One keep-alive connection to the upstream; relays its bytes to the current client."""

    def __init__(self, pool: list[Upstream]) -> None:
        self.pool = pool
        self.client: Client | None = None
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's: not a subclass

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is not None and client.transport is not None:
            client.transport.write(data)
            if client.relay.sse:
                client.events(data)
        self.parser.feed_data(data)
        if self.done:  # the response ended: back to the pool, the client may send another
            self.done = False
            self.parser = httptools.HttpResponseParser(self)
            self.client = None
            if client is not None:
                client.upstream = None
                client.ended()
            if len(self.pool) < MAX_IDLE:
                self.pool.append(self)
            elif self.transport is not None:
                self.transport.close()

    def on_headers_complete(self) -> None:
        client = self.client
        if client is not None and client.head is not None and not client.head.done():
            client.head.set_result(None)

    def on_message_complete(self) -> None:
        self.done = True

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool:
            self.pool.remove(self)
        client = self.client
        if client is not None and client.transport is not None:
            client.transport.close()


class Client(asyncio.Protocol):
    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.upstream: Upstream | None = None
        self.url = b""
        self.headers: list[bytes] = []
        self.body: list[bytes] = []
        self.bearer = b""
        self.head: asyncio.Future[None] | None = None
        self.reservation: Any = None
        self.tokens = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's: not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower in (b"authorization", b"content-type"):
            self.headers.append(name + b": " + value + b"\r\n")
            if lower == b"authorization":
                self.bearer = value[7:]

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body = b"".join(self.body)
        relay = self.relay
        if relay.parse:
            body = self._parse(body)
            if not body:
                return
        request = b"".join(
            [
                b"POST ",
                self.url,
                b" HTTP/1.1\r\nhost: ",
                self.relay.host,
                b"\r\n",
                *self.headers,
                b"content-length: ",
                str(len(body)).encode(),
                b"\r\n\r\n",
                body,
            ]
        )
        self.url, self.headers, self.body = b"", [], []
        if relay.task:
            relay.loop.create_task(self._handle(request))
            return
        pool = relay.pool
        if pool:
            self._send(pool.pop(), request)
        else:
            relay.loop.create_task(self._open(request))

    def _parse(self, body: bytes) -> bytes:
        relay = self.relay
        data = orjson.loads(body)
        key = relay.keys.get(hashlib.sha256(self.bearer).hexdigest())
        if (
            key is None
            or not isinstance(data, dict)
            or data.get("model") not in relay.models
            or data.get("stream") is not True
        ):
            self._refuse(b"400 Bad Request")
            return b""
        self.request_id = os.urandom(16).hex()
        self.key = key
        data["stream_options"] = {"include_usage": True}
        return orjson.dumps(data)

    def _refuse(self, status: bytes) -> None:
        if self.transport is not None:
            self.transport.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\n\r\n")

    async def _handle(self, request: bytes) -> None:
        relay = self.relay
        if relay.limiter is not None:
            admission = await relay.limiter.admit(self.key, 100, self.request_id)
            if not admission.allowed:
                self._refuse(b"429 Too Many Requests")
                return
            self.reservation = admission.reservation
        pool = relay.pool
        if pool:
            upstream = pool.pop()
        else:
            try:
                _, upstream = await relay.loop.create_connection(
                    lambda: Upstream(relay.pool), relay.address[0], relay.address[1]
                )
            except OSError:
                self._refuse(b"502 Bad Gateway")
                return
        self.head = relay.loop.create_future()
        self._send(upstream, request)
        await self.head
        self.head = None

    def events(self, data: bytes) -> None:
        """Each `data:` event of a read; the usage of the one that has it."""
        for event in data.split(b"\n\n"):
            start = event.find(b"data: ")
            if start < 0:
                continue
            payload = event[start + 6 :]
            if payload.endswith(b"}") and b'"usage":{' in payload:
                usage = orjson.loads(payload)["usage"]
                self.tokens = usage["prompt_tokens"] + usage["completion_tokens"]

    def ended(self) -> None:
        limiter = self.relay.limiter
        if limiter is not None and self.reservation is not None:
            limiter.settle_soon(self.reservation, self.tokens)
            self.reservation = None

    async def _open(self, request: bytes) -> None:
        relay = self.relay
        try:
            _, upstream = await relay.loop.create_connection(
                lambda: Upstream(relay.pool), relay.address[0], relay.address[1]
            )
        except OSError:
            if self.transport is not None:
                self.transport.write(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            return
        self._send(upstream, request)

    def _send(self, upstream: Upstream, request: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            upstream.pool.append(upstream)
            return
        self.upstream = upstream
        upstream.client = self
        assert upstream.transport is not None
        upstream.transport.write(request)

    def pause_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None:
            upstream.client = None
            upstream.transport.close()  # mid-response: the connection cannot be reused


class Relay:
    def __init__(
        self, loop: asyncio.AbstractEventLoop, upstream: str, rungs: set[str], config: str
    ) -> None:
        parts = urlsplit(upstream)
        self.loop = loop
        self.address = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.host = parts.netloc.encode()
        self.pool: list[Upstream] = []
        self.parse = "parse" in rungs
        self.task = "task" in rungs
        self.sse = "sse" in rungs
        self.limiter: Any = None
        self.keys: dict[str, Any] = {}
        self.models: set[str] = set()
        if config:
            from gateway.config import load_config

            gateway = load_config(config)
            self.keys = {key.key_sha256: key for key in gateway.keys}
            self.models = {model.name for model in gateway.models}
            if "redis" in rungs:
                from gateway.limits.redis_store import RedisLimiter

                self.limiter = RedisLimiter(gateway.redis_url, on_backend_error=lambda: None)


async def serve(host: str, port: int, upstream: str, rungs: set[str], config: str) -> None:
    loop = asyncio.get_running_loop()
    relay = Relay(loop, upstream, rungs, config)
    if relay.limiter is not None:
        await relay.limiter.start()
    server = await loop.create_server(lambda: Client(relay), host, port, backlog=2048)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--rungs", default="", help=f"comma-separated, cumulative: {RUNGS}")
    parser.add_argument("--config", default="", help="the bench's gateway config (keys, Redis)")
    args = parser.parse_args()
    rungs = {r for r in args.rungs.split(",") if r}
    if (
        rungs - set(RUNGS)
        or (rungs and not args.config)
        or ("redis" in rungs and "task" not in rungs)
    ):
        parser.error(f"--rungs: of {RUNGS}, with --config; redis needs task")
    uvloop.run(serve(args.host, args.port, args.upstream, rungs, args.config))


if __name__ == "__main__":
    main()
