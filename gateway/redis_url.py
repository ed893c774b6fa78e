"""Reading `redis_url`: the address of one Redis, or the seeds of a Redis Cluster.

Pure parsing, below both the config (which validates the URL when it loads) and the limits
backends (which connect to what it names); imports nothing of the gateway. Every error is a
ValueError naming the problem, never the URL (it may hold a password).

- `redis://[[user]:password@]host[:port][/db]`, `rediss://` (TLS, `?ssl_ca_certs=/path`),
  `unix:///path/to/socket?db=N`: `Address`;
- `redis+cluster://[[user]:password@]host:port[,host:port...]` (or `rediss+cluster://`):
  `ClusterAddress`.

Any other URL option is refused (not silently ignored), and so is Sentinel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


def validate(url: str) -> None:
    """Raises ValueError when `url` names no Redis the limiter can use."""
    if is_cluster_url(url):
        ClusterAddress.from_url(url)
    else:
        Address.from_url(url)


_SINGLE_OPTIONS = frozenset({"db", "ssl_ca_certs"})
"""The URL options `Address` reads; any other is refused."""


@dataclass(frozen=True)
class Address:
    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None
    """A Unix socket instead of host and port."""
    tls: bool = False
    username: str | None = None
    password: str | None = None
    db: int = 0
    ca_certs: str | None = None
    """rediss: the CA file to verify the server with, instead of the system's."""

    @classmethod
    def from_url(cls, url: str) -> Address:
        """Raises ValueError naming the problem (never the URL: it may hold a password).
        Options this client does not implement are refused rather than ignored."""
        parts = urlsplit(url)
        if parts.scheme in ("redis+sentinel", "rediss+sentinel"):
            raise ValueError(
                "redis_url: Sentinel is not supported; point redis_url at the master "
                "(redis://host:port) or use a Redis Cluster (redis+cluster://host:port,...)"
            )
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(query) - _SINGLE_OPTIONS)
        if unknown:
            raise ValueError(
                f"redis_url: option {unknown[0]!r} is not supported "
                f"(supported: {', '.join(sorted(_SINGLE_OPTIONS))})"
            )
        if "ssl_ca_certs" in query and parts.scheme != "rediss":
            raise ValueError("redis_url: ssl_ca_certs needs TLS: use rediss://")
        unix = parts.scheme == "unix"
        db_text = query.get("db", [""])[0] or ("" if unix else parts.path.lstrip("/"))
        try:
            db = int(db_text or 0)
        except ValueError:
            raise ValueError(f"redis_url: database {db_text!r} is not a number") from None
        if unix:
            return cls(path=unquote(parts.path), db=db, **_auth(parts))
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(
                f"redis_url: scheme {parts.scheme!r} is not redis, rediss, unix or "
                "redis+cluster / rediss+cluster"
            )
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            tls=parts.scheme == "rediss",
            db=db,
            ca_certs=query.get("ssl_ca_certs", [None])[0],
            **_auth(parts),
        )


def _auth(parts: Any) -> dict[str, Any]:
    return {
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password is not None else None,
    }


CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
_CLUSTER_OPTIONS = frozenset({"ssl_ca_certs"})


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


@dataclass(frozen=True)
class ClusterAddress:
    seeds: tuple[tuple[str, int], ...]
    tls: bool = False
    username: str | None = None
    password: str | None = None
    ca_certs: str | None = None

    @classmethod
    def from_url(cls, url: str) -> ClusterAddress:
        """Raises ValueError naming the problem (never the URL: it may hold a password)."""
        parts = urlsplit(url)
        if parts.scheme.lower() not in CLUSTER_SCHEMES:
            raise ValueError(f"redis_url: scheme {parts.scheme!r} is not a Cluster scheme")
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(query) - _CLUSTER_OPTIONS)
        if unknown:
            raise ValueError(
                f"redis_url: option {unknown[0]!r} is not supported with a Cluster "
                f"(supported: {', '.join(sorted(_CLUSTER_OPTIONS))})"
            )
        if parts.path.strip("/") not in ("", "0"):
            raise ValueError("redis_url: a Redis Cluster has only database 0; drop the /db")
        credentials, _, hosts = parts.netloc.rpartition("@")
        username = password = None
        if credentials:
            user, colon, secret = credentials.partition(":")
            username = unquote(user) or None
            password = unquote(secret) if colon else None
        seeds = []
        for seed in hosts.split(","):
            name, colon, port = seed.strip().rpartition(":")
            if not colon or name.endswith(":"):  # no port, or a bare IPv6 address
                name, port = seed.strip(), ""
            name = name.strip("[]")
            if not name:
                raise ValueError("redis_url: every Cluster seed needs a host (host:port,...)")
            try:
                number = int(port or 6379)
            except ValueError:
                raise ValueError(f"redis_url: port {port!r} is not a number") from None
            seeds.append((name, number))
        ca_certs = query.get("ssl_ca_certs", [None])[-1]
        return cls(
            seeds=tuple(seeds),
            tls=parts.scheme.lower() == "rediss+cluster",
            username=username,
            password=password,
            ca_certs=ca_certs,
        )
