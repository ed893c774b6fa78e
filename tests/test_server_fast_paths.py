"""`gateway serve`'s shortcuts past ASGI layers on a request's path, each against the way it
replaces: a POST to one of the app's relayed routes handed to its endpoint without the app's
own frame (`post_routes`), a body that came whole handed over without `receive()` (the
request cycle's `body_now`, the `gateway.body_reader` extension), a transport's IPv4 address
taken as it is (`_address`). On the recording transport of tests/test_server.py."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from starlette.types import Receive, Scope, Send

from gateway.asgi import body_reader
from gateway.server.protocol import _address
from tests.test_server import POST, connected, exchange


class Routed:
    """An app with POST routes the server may call directly (as `GatewayApp` has); each
    answer names who gave it."""

    def __init__(self) -> None:
        self.post_routes = {"/direct": self.route}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.answer(send, b"app " + scope["method"].encode())

    async def route(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.answer(send, b"route " + scope["path"].encode())

    async def answer(self, send: Send, body: bytes) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize(
    ("request_line", "answered_by"),
    [
        (b"POST /direct", b"route /direct"),
        (b"POST /direct?x=1", b"route /direct"),
        (b"GET /direct", b"app GET"),
        (b"POST /other", b"app POST"),
        (b"POST /direct/", b"app POST"),
    ],
)
def test_a_post_to_one_of_the_apps_post_routes_goes_straight_to_its_endpoint(
    request_line: bytes, answered_by: bytes
) -> None:
    # What `GatewayApp.__call__` would have done, without its frame (as `gateway serve`
    # runs it: uvicorn's proxy-headers middleware off).
    request = request_line + b" HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}"
    transport = asyncio.run(exchange(Routed(), request, proxy_headers=False))
    assert b"".join(transport.writes).endswith(b"\r\n%b\r\n0\r\n\r\n" % answered_by)
    # An app uvicorn wrapped in a middleware of its own gets every request through it.
    transport = asyncio.run(exchange(Routed(), request, proxy_headers=True))
    answered = b"app " + request_line.split(b" ")[0]
    assert b"".join(transport.writes).endswith(b"\r\n%b\r\n0\r\n\r\n" % answered)


def test_the_gateway_app_names_its_relayed_routes_as_post_routes() -> None:
    from gateway.app import GatewayApp, create_app
    from gateway.config import embedded_default
    from gateway.edge.completions import RelayEndpoint

    app = create_app(embedded_default())
    assert isinstance(app, GatewayApp)
    assert set(app.post_routes) == {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/messages",
    }
    assert all(isinstance(e, RelayEndpoint) for e in app.post_routes.values())


def reads_with(use_reader: bool) -> Any:
    """An app answering with every message it got for its body (the body reader's first,
    when `use_reader`, then `receive()`'s until `more_body` is false), and whether the
    reader gave one."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        messages: list[Any] = []
        given = None
        if use_reader:
            given = body_reader(scope).body_now()  # type: ignore[union-attr]
            if given is not None:
                messages.append({"type": "http.request", "body": given, "more_body": False})
                # taken: the reader has nothing more to give, as `receive()` would not
                assert body_reader(scope).body_now() is None  # type: ignore[union-attr]
        while not messages or messages[-1].get("more_body"):
            messages.append(await receive())
        answer = [{**m, "body": m.get("body", b"").hex()} for m in messages]
        body = orjson.dumps({"messages": answer, "reader": int(given is not None)})
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    return app


@pytest.mark.parametrize(
    ("request_bytes", "read", "by_reader"),
    [
        (POST, 0, True),
        (b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n", 0, True),
        (b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", 0, True),
        (b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n0123456789", 4, True),
        (b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
         0, True),
        (b"POST / HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n{}", 0,
         False),
    ],
)  # fmt: skip
def test_the_body_reader_gives_what_receive_would_or_leaves_it_to_receive(
    request_bytes: bytes, read: int, by_reader: bool
) -> None:
    with_reader = asyncio.run(exchange(reads_with(True), request_bytes, read))
    with_receive = asyncio.run(exchange(reads_with(False), request_bytes, read))
    mine = b"".join(with_reader.writes)
    assert (b'"reader":1' in mine) is by_reader
    assert b'"messages":[{' in mine
    assert mine.replace(b'"reader":1', b'"reader":0') == b"".join(with_receive.writes)


def test_the_body_reader_leaves_a_body_still_arriving_to_receive() -> None:
    async def scenario() -> list[bytes]:
        answers = []
        for use_reader in (True, False):
            protocol, transport, state = connected(reads_with(use_reader))
            protocol.data_received(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n0123")
            for _ in range(5):  # the app asks while the body is still arriving
                await asyncio.sleep(0)
            protocol.data_received(b"456789")
            for _ in range(100):
                await asyncio.sleep(0)
                if not state.tasks:
                    break
            answers.append(b"".join(transport.writes))
        return answers

    with_reader, with_receive = asyncio.run(scenario())
    assert b'"reader":0' in with_reader and b'"more_body":true' in with_reader
    assert with_reader == with_receive


@pytest.mark.parametrize(
    ("info", "address"),
    [
        (("127.0.0.1", 8000), ("127.0.0.1", 8000)),
        (("::1", 8000, 0, 0), ("::1", 8000)),
        (["10.0.0.1", 80], ("10.0.0.1", 80)),
        (("10.0.0.1", True), ("10.0.0.1", 1)),
        ("/run/gateway.sock", ("/run/gateway.sock", None)),
        (None, None),
        (("x",), None),
    ],
)
def test_an_address_is_the_one_uvicorn_would_make(info: Any, address: Any) -> None:
    # An IPv4 address is taken as it is (already a (str, int) pair); the rest made anew.
    made = _address(info)
    assert made == address and (made is None or type(made[1]) in (int, type(None)))
