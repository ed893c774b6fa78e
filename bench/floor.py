"""The floor: a bare aiohttp byte relay, as cheap as a Python streaming proxy gets.

`python -m bench.floor --port N --upstream URL` forwards `POST /v1/...` to the upstream and
writes the upstream's body bytes to the client as they arrive (aiohttp client ->
`StreamResponse.write`), with no parsing, no auth, no limits, no metrics, no logging. It
runs on uvloop, like the gateway, so the comparison is relay against relay.

Its two departures from aiohttp's defaults let it take the paced scenario's 500 streams the
way the gateway does. The connector has `limit=0` (no cap on upstream connections): the
default cap of 100 would queue the streams behind each other and make the floor measure
its pool, not its relaying. The listening socket's backlog is 2048, uvicorn's default (so
the gateway's): with aiohttp's 128, a burst of 500 connections overflows the accept queue,
and the dropped ones reconnect a second later (a TTFT p99 over 1 s that is the kernel's
retry timer, not the relay).
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web

_SESSION = web.AppKey("session", aiohttp.ClientSession)
_UPSTREAM = web.AppKey("upstream", str)


async def relay(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    session = request.app[_SESSION]
    headers = {"content-type": "application/json"}
    if "authorization" in request.headers:
        headers["authorization"] = request.headers["authorization"]
    async with session.post(
        request.app[_UPSTREAM] + request.path, data=body, headers=headers
    ) as up:
        response = web.StreamResponse(
            status=up.status,
            headers={"content-type": up.headers.get("content-type", "application/octet-stream")},
        )
        await response.prepare(request)
        async for data in up.content.iter_any():
            await response.write(data)
        await response.write_eof()
        return response


def build_app(upstream: str) -> web.Application:
    app = web.Application()
    app[_UPSTREAM] = upstream.rstrip("/")

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
            app[_SESSION] = session
            yield

    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/{tail:.*}", relay)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    web.run_app(
        build_app(args.upstream),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        backlog=2048,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
