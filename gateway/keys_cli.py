"""`gateway keys create|list|show|update|rotate|revoke` and `gateway migrate`.

The `keys` commands are a thin shell over the admin API of a running gateway:
they never open the database themselves, so a change made here reaches every replica the
same way as one made with curl. Answers print as JSON; an error prints the API's message
on stderr and exits 1. `migrate` brings a database's schema to this gateway's version, for
a deploy that migrates before it starts replicas (`gateway serve` also does it at start-up).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

_LIMITS = ("rpm", "tpm", "max_concurrent", "daily_tokens", "monthly_tokens")


def add_commands(sub: Any) -> None:
    """Register `keys` and `migrate` on the `gateway` parser's subcommands."""
    keys = sub.add_parser("keys", help="manage the keys of a running gateway's database")
    keys.add_argument("--url", default=os.environ.get("GATEWAY_URL", "http://127.0.0.1:8000"))
    keys.add_argument("--admin-key", help="default: $GATEWAY_ADMIN_KEY")
    actions = keys.add_subparsers(dest="action", required=True)

    create = actions.add_parser("create", help="create a key and print its secret (once)")
    create.add_argument("id")
    _add_fields(create)
    actions.add_parser("list", help="every key, config and database")
    show = actions.add_parser("show", help="one key")
    show.add_argument("id")
    upd = actions.add_parser("update", help="change a key's models, limits, budget, expiry")
    upd.add_argument("id")
    _add_fields(upd)
    blocked = upd.add_mutually_exclusive_group()
    blocked.add_argument("--block", dest="blocked", action="store_true", default=None)
    blocked.add_argument("--unblock", dest="blocked", action="store_false")
    rotate = actions.add_parser("rotate", help="a new secret; the old works for --grace")
    rotate.add_argument("id")
    rotate.add_argument("--grace", type=float, default=0.0, help="seconds (default 0)")
    revoke = actions.add_parser("revoke", help="the key stops working everywhere")
    revoke.add_argument("id")
    keys.set_defaults(func=run_keys)

    migrate = sub.add_parser("migrate", help="create or upgrade the key database's schema")
    migrate.add_argument("--config")
    migrate.set_defaults(func=run_migrate)


def _add_fields(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", help="comma-separated model names; 'all' for every model")
    for name in _LIMITS:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int)
    parser.add_argument("--daily-usd", type=float)
    parser.add_argument("--monthly-usd", type=float)
    parser.add_argument("--expires-at", help="unix seconds or ISO 8601; 'never' to clear")
    parser.add_argument("--metadata", help="a JSON object")


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if args.models is not None:
        body["models"] = None if args.models == "all" else [m for m in args.models.split(",") if m]
    limits = {name: getattr(args, name) for name in _LIMITS if getattr(args, name) is not None}
    if limits:
        body["limits"] = limits
    budget = {
        name: getattr(args, name)
        for name in ("daily_usd", "monthly_usd")
        if getattr(args, name) is not None
    }
    if budget:
        body["budget"] = budget
    if args.expires_at is not None:
        expires: Any = args.expires_at
        if expires == "never":
            expires = None
        elif expires.replace(".", "", 1).isdigit():
            expires = float(expires)
        body["expires_at"] = expires
    if args.metadata is not None:
        body["metadata"] = json.loads(args.metadata)
    return body


def run_keys(args: argparse.Namespace) -> int:
    import httpx

    admin_key = args.admin_key or os.environ.get("GATEWAY_ADMIN_KEY", "")
    if not admin_key:
        print("gateway: keys needs --admin-key or GATEWAY_ADMIN_KEY", file=sys.stderr)
        return 2
    base = args.url.rstrip("/") + "/admin/keys"
    action = args.action
    try:
        if action == "list":
            method, url, body = "GET", base, None
        elif action == "show":
            method, url, body = "GET", f"{base}/{args.id}", None
        elif action == "create":
            method, url, body = "POST", base, {"id": args.id, **_fields(args)}
        elif action == "update":
            body = _fields(args)
            if args.blocked is not None:
                body["blocked"] = args.blocked
            method, url = "PATCH", f"{base}/{args.id}"
        elif action == "rotate":
            method, url, body = "POST", f"{base}/{args.id}/rotate", {"grace_seconds": args.grace}
        else:
            method, url, body = "DELETE", f"{base}/{args.id}", None
    except json.JSONDecodeError:
        print("gateway: --metadata must be a JSON object", file=sys.stderr)
        return 2
    try:
        response = httpx.request(
            method, url, json=body, headers={"authorization": f"Bearer {admin_key}"}, timeout=10
        )
    except httpx.HTTPError as exc:
        print(f"gateway: cannot reach {args.url} ({type(exc).__name__})", file=sys.stderr)
        return 1
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:300]
        print(f"gateway: {response.status_code}: {message}", file=sys.stderr)
        return 1
    print(json.dumps(response.json(), indent=2))
    return 0


def run_migrate(args: argparse.Namespace) -> int:
    import asyncio

    from gateway.config import ConfigError, resolve_config
    from gateway.keys.model import StoreUnavailable
    from gateway.keys.schema import SchemaMismatch
    from gateway.keys.store import describe_url, migrate_database

    try:
        config = resolve_config(args.config)
    except ConfigError as exc:
        print(f"gateway: config error: {exc}", file=sys.stderr)
        return 2
    if not config.database_url:
        print("gateway: migrate needs database_url (or DATABASE_URL)", file=sys.stderr)
        return 2
    where = describe_url(config.database_url)
    try:
        applied = asyncio.run(migrate_database(config.database_url))
    except (StoreUnavailable, SchemaMismatch) as exc:
        print(f"gateway: cannot migrate the key database ({where}): {exc}", file=sys.stderr)
        return 1
    done = ", ".join(map(str, applied)) if applied else "none, already up to date"
    print(f"{where}: migrations applied: {done}")
    return 0
