"""A local OTLP/HTTP trace sink for the `--tracing` variants: takes every export, keeps none.

`python -m bench.otlp_sink --port N` answers `POST /v1/traces` with 200 after reading the
body (no decoding: the gateway's cost is the one measured, not the sink's) and counts the
exports; `GET /stats` says how many came, and how many bytes. The bench's `--tracing
RATIO,...` adds one gateway variant per ratio, exporting here (`tracing_variant_config`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml
from aiohttp import web

_STATS = web.AppKey("stats", dict)


async def export(request: web.Request) -> web.Response:
    body = await request.read()
    stats = request.app[_STATS]
    stats["exports"] += 1
    stats["bytes"] += len(body)
    return web.Response(body=b"", content_type="application/x-protobuf")


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[_STATS])


def build_app() -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[_STATS] = {"exports": 0, "bytes": 0}
    app.router.add_post("/v1/traces", export)
    app.router.add_get("/stats", stats)
    app.router.add_get("/healthz", stats)
    return app


def tracing_variant_config(path: Path, sink_url: str, ratio: float) -> None:
    """Turn tracing on in a bench gateway's config file, exporting to the sink."""
    config = yaml.safe_load(path.read_text())
    config["tracing"] = {"otlp_endpoint": sink_url, "sample_ratio": ratio}
    path.write_text(yaml.safe_dump(config))


def sink_stats(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url + "/stats", timeout=2) as response:
        data = json.loads(response.read())
    return f"otlp sink: {data['exports']} exports, {data['bytes'] / 1e6:.1f} MB of spans taken"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(build_app(), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
