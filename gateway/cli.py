"""The `gateway` command: serve, hash-key, usage, check-config."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import structlog

from gateway.config import DEMO_KEY, ConfigError, GatewayConfig, hash_key, resolve_config


def _examples(base: str, model: str) -> tuple[str, str]:
    """A curl command and an OpenAI SDK snippet for the embedded default's mock model, each
    ready to paste as it is (the snippet starts at column 0: Python would refuse an indent).
    """
    curl = "\n".join(
        [
            f"curl -N {base}/v1/chat/completions \\",
            f"  -H 'Authorization: Bearer {DEMO_KEY}' -H 'Content-Type: application/json' \\",
            f'  -d \'{{"model": "{model}", "stream": true, '
            '"messages": [{"role": "user", "content": "Hello!"}]}\'',
        ]
    )
    sdk = "\n".join(
        [
            "from openai import OpenAI",
            f"client = OpenAI(base_url='{base}/v1', api_key='{DEMO_KEY}')",
            f"for chunk in client.chat.completions.create(model='{model}', stream=True,",
            "        messages=[{'role': 'user', 'content': 'Hello!'}]):",
            "    print(chunk.choices[0].delta.content or '' if chunk.choices else '', end='')",
        ]
    )
    return curl, sdk


def _banner(config: GatewayConfig, host: str, port: int, workers: int) -> dict[str, object]:
    """What `gateway serve` says once it listens: the fields of its JSON line, from which the
    console banner is written too."""
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::") else host
    base = f"http://{shown}:{port}"
    fields: dict[str, object] = {
        "url": f"http://{host}:{port}",
        "workers": workers,
        "config": config.source,
        "limits": "redis" if config.redis_url else "in memory",
        "metrics": f"{base}/metrics",
        "playground": f"{base}/",
    }
    if egress := config.egress.describe():
        fields["egress"] = egress  # the proxies' URLs without their credentials
    if config.embedded_default:
        curl, sdk = _examples(base, config.models[0].name)
        fields.update(demo_key=DEMO_KEY, try_curl=curl, try_openai_sdk=sdk)
    return fields


def _console_banner(fields: dict[str, object]) -> str:
    workers = fields["workers"]
    lines = [
        f"gateway: listening on {fields['url']} ({workers} worker{'s' * (workers != 1)}), "
        f"config {fields['config']}, limits {fields['limits']}",
        f"gateway: metrics at {fields['metrics']}, playground at {fields['playground']}",
    ]
    if "egress" in fields:
        lines.append(f"gateway: {fields['egress']}")
    if "demo_key" in fields:
        lines += [
            "",
            "Embedded default: the built-in mock model streams a simulated reply; no provider key "
            "needed.",
            f"Demo key: {fields['demo_key']}",
            "",
            "Try it:",
            "",
            str(fields["try_curl"]),
            "",
            "Or with the OpenAI SDK:",
            "",
            str(fields["try_openai_sdk"]),
            "",
        ]
    return "\n".join(lines)


def _serve(args: argparse.Namespace) -> int:
    # Process logs (this banner included) go to stderr, as JSON unless a person watches:
    # stdout is the request log's alone.
    from gateway.observability.requestlog import configure_process_logging, logs_as_json
    from gateway.versions import check_tested_versions

    console = not logs_as_json(sys.stderr)
    configure_process_logging(json=not console)
    log = structlog.get_logger("gateway.cli")
    versions = check_tested_versions(os.environ)
    for message in versions.messages:
        if versions.refuse:
            _fatal(log, console, message)
        else:
            log.warning(message)
    if versions.refuse:
        return 2
    try:
        config = resolve_config(args.config)
    except ConfigError as exc:
        _fatal(log, console, f"config error: {exc}")
        return 2
    if args.config:
        os.environ["GATEWAY_CONFIG"] = os.path.abspath(args.config)
    if config.database_url and (problem := _prepare_key_database(config.database_url)):
        _fatal(log, console, problem)
        return 1
    from gateway.server import bind, serve

    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        reason = exc.strerror or str(exc)  # e.g. "Address already in use"
        _fatal(log, console, f"cannot listen on {args.host}:{args.port}: {reason}")
        return 1
    banner = _banner(config, args.host, sock.getsockname()[1], args.workers)
    if console:
        print(_console_banner(banner), file=sys.stderr, flush=True)
    else:
        log.info("listening", **banner)
    if args.workers > 1 and not config.redis_url:
        log.warning(
            "limits are in memory, so each worker counts its own; "
            "set REDIS_URL for limits that hold across workers"
        )
    if args.workers > 1:
        # Workers are separate processes: metrics go through prometheus-client's
        # multiprocess files, and each worker builds its app from the same config.
        from gateway.observability.metrics import prepare_multiprocess_dir

        path = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(
            prefix="gateway-metrics-"
        )
        prepare_multiprocess_dir(path)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
        app: object = "gateway.app:app_from_env"
    else:
        from gateway.app import create_app

        app = create_app(config)
    serve(
        app,  # type: ignore[arg-type]
        sock=sock,
        workers=args.workers,
        grace=config.shutdown_grace,
    )
    return 0


def _prepare_key_database(url: str) -> str:
    """Run the key database's missing migrations before listening (once, not per worker);
    the one line to print when the database cannot be reached, else ""."""
    import asyncio

    from gateway.keys.model import StoreUnavailable
    from gateway.keys.schema import SchemaMismatch
    from gateway.keys.store import describe_url, migrate_database

    try:
        asyncio.run(migrate_database(url))
    except (StoreUnavailable, SchemaMismatch) as exc:
        return f"cannot use the key database ({describe_url(url)}): {exc}"
    return ""


def _fatal(log: Any, console: bool, message: str) -> None:
    """A start-up failure: one plain line for a person, one JSON line for a log collector."""
    if console:
        print(f"gateway: {message}", file=sys.stderr, flush=True)
    else:
        log.error(message)


def _hash_key(args: argparse.Namespace) -> int:
    secret = args.secret if args.secret is not None else sys.stdin.readline().rstrip("\n")
    if not secret:
        print("gateway: hash-key needs a secret (argument or one line on stdin)", file=sys.stderr)
        return 2
    print(hash_key(secret))
    return 0


def _check_config(args: argparse.Namespace) -> int:
    try:
        config = resolve_config(args.config)
    except ConfigError as exc:
        print(f"gateway: config error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{config.source}: ok ({len(config.providers)} providers, {len(config.models)} models, "
        f"{len(config.keys)} keys, limits {'redis' if config.redis_url else 'in memory'})"
    )
    return 0


def _usage(args: argparse.Namespace) -> int:
    import httpx

    from gateway.limits.report import format_usage_table, usage_of_row

    admin_key = args.admin_key or os.environ.get("GATEWAY_ADMIN_KEY", "")
    if not admin_key:
        print("gateway: usage needs --admin-key or GATEWAY_ADMIN_KEY", file=sys.stderr)
        return 2
    try:
        response = httpx.get(
            args.url.rstrip("/") + "/admin/usage",
            headers={"authorization": f"Bearer {admin_key}"},
            timeout=10,
        )
    except httpx.HTTPError as exc:
        print(f"gateway: cannot reach {args.url} ({type(exc).__name__})", file=sys.stderr)
        return 1
    if response.status_code != 200:
        print(
            f"gateway: {args.url} answered {response.status_code}: {response.text[:300]}",
            file=sys.stderr,
        )
        return 1
    rows = response.json()["data"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    usages = [usage_of_row(row) for row in rows]
    print(format_usage_table(usages))
    return 0


def _admin_get(args: argparse.Namespace, path: str, params: dict[str, str]) -> Any:
    """GET an admin route of a running gateway; its JSON, or None after printing why not."""
    import httpx

    admin_key = args.admin_key or os.environ.get("GATEWAY_ADMIN_KEY", "")
    if not admin_key:
        print(
            f"gateway: {args.func.__name__[1:]} needs --admin-key or GATEWAY_ADMIN_KEY",
            file=sys.stderr,
        )
        return None
    try:
        response = httpx.get(
            args.url.rstrip("/") + path,
            params=params,
            headers={"authorization": f"Bearer {admin_key}"},
            timeout=10,
        )
    except httpx.HTTPError as exc:
        print(f"gateway: cannot reach {args.url} ({type(exc).__name__})", file=sys.stderr)
        return None
    if response.status_code != 200:
        print(
            f"gateway: {args.url} answered {response.status_code}: {response.text[:300]}",
            file=sys.stderr,
        )
        return None
    return response.json()


def _spend(args: argparse.Namespace) -> int:
    from gateway.observability.spend import format_spend_table

    params = {"group_by": args.group_by}
    for name, value in (("key_id", args.key_id), ("from", args.since), ("to", args.until)):
        if value:
            params[name] = value
    answer = _admin_get(args, "/admin/spend", params)
    if answer is None:
        return 1
    if args.json:
        print(json.dumps(answer["data"], indent=2))
    else:
        print(format_spend_table(answer["data"], args.group_by))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Streaming LLM gateway")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="YAML config (default: $GATEWAY_CONFIG, else embedded)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.set_defaults(func=_serve)

    hk = sub.add_parser("hash-key", help="print the sha256 of a client key for the config")
    hk.add_argument("secret", nargs="?", help="the key (omit to read one line from stdin)")
    hk.set_defaults(func=_hash_key)

    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("--config")
    check.set_defaults(func=_check_config)

    usage = sub.add_parser("usage", help="per-key usage and limits of a running gateway")
    usage.add_argument("--url", default="http://127.0.0.1:8000")
    usage.add_argument("--admin-key", help="default: $GATEWAY_ADMIN_KEY")
    usage.add_argument("--json", action="store_true")
    usage.set_defaults(func=_usage)

    spend = sub.add_parser("spend", help="spend per day or model, from the request ledger")
    spend.add_argument("--url", default="http://127.0.0.1:8000")
    spend.add_argument("--admin-key", help="default: $GATEWAY_ADMIN_KEY")
    spend.add_argument("--key-id")
    spend.add_argument("--from", dest="since", help="2025-01-01, ISO 8601 or unix seconds")
    spend.add_argument("--to", dest="until", help="exclusive, same forms as --from")
    spend.add_argument("--group-by", choices=("day", "model"), default="day")
    spend.add_argument("--json", action="store_true")
    spend.set_defaults(func=_spend)

    from gateway.keys_cli import add_commands

    add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
