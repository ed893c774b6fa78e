"""The gateway under a chosen event loop and HTTP parser, for the benchmark's comparison.

`gateway serve` runs uvicorn on uvloop (its "auto" loop, when installed) with httptools
(`BoundedHttpToolsProtocol`). To show what those two are worth, the benchmark can also run
`python -m bench.serve_variant --config FILE --port N --loop asyncio --http h11`: the same
app, the same draining server and the same uvicorn settings as `gateway.server.serve`,
with only the loop and the HTTP implementation changed. (h11 has no per-connection write
high-water mark hook, so `stream_buffer_bytes` does not apply to that variant.)
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn

from gateway.app import create_app
from gateway.config import resolve_config
from gateway.server import GatewayServer
from gateway.server.protocol import BoundedHttpToolsProtocol


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto")
    parser.add_argument("--http", choices=["httptools", "h11"], default="httptools")
    args = parser.parse_args()
    config = resolve_config(args.config)
    http: Any = BoundedHttpToolsProtocol if args.http == "httptools" else "h11"
    uvicorn_config = uvicorn.Config(
        create_app(config),
        host=args.host,
        port=args.port,
        loop=args.loop,
        http=http,
        access_log=False,
        log_level="warning",
        timeout_keep_alive=75,
        timeout_graceful_shutdown=int(config.shutdown_grace) + 10,
        lifespan="on",
    )
    GatewayServer(uvicorn_config).run()


if __name__ == "__main__":
    main()
