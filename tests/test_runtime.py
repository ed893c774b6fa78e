"""The runtime is built whole in the app's lifespan and handed over as lifespan state;
building the app opens nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.types import Message

from gateway.app import create_app
from gateway.asgi import STATE_KEY
from gateway.config import embedded_default
from gateway.runtime import Runtime


def test_the_lifespan_hands_a_whole_runtime_to_every_request() -> None:
    async def run() -> None:
        # Building the app builds nothing: the runtime comes with the lifespan.
        app = create_app(embedded_default())
        tasks = len(asyncio.all_tasks())
        state: dict[str, Any] = {}
        to_app: asyncio.Queue[Message] = asyncio.Queue()
        from_app: asyncio.Queue[Message] = asyncio.Queue()
        lifespan = asyncio.create_task(
            app({"type": "lifespan", "state": state}, to_app.get, from_app.put)
        )
        assert len(asyncio.all_tasks()) == tasks + 1  # the lifespan alone: nothing opened
        await to_app.put({"type": "lifespan.startup"})
        assert (await from_app.get())["type"] == "lifespan.startup.complete"
        runtime = state[STATE_KEY]
        assert isinstance(runtime, Runtime)
        assert set(runtime.providers) == {"demo"} and runtime.start_budget is not None
        assert runtime.relay.watches is runtime.watches
        # The deployments' account limits count in the client limiter's own backend.
        assert runtime.upstream_limits.store is runtime.limiter

        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "GET",
            "path": "/healthz",
            "raw_path": b"/healthz",
            "query_string": b"",
            "headers": [],
            "state": dict(state),  # what uvicorn gives each request
        }
        await app(scope, receive, send)
        assert sent[0]["status"] == 200
        assert orjson.loads(sent[1]["body"])["open_requests"] == 0

        await to_app.put({"type": "lifespan.shutdown"})
        assert (await from_app.get())["type"] == "lifespan.shutdown.complete"
        await lifespan

    asyncio.run(run())
