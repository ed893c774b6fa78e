"""The limiter's Redis Cluster client: redis-py's `RedisCluster` behind `RespClient`'s API.

`redis_url: redis+cluster://[[user]:password@]host:port[,host:port...]` (or
`rediss+cluster://`, TLS; `?ssl_ca_certs=/path/ca.pem`) selects it: the hosts are seed
nodes, any one reachable is enough to learn the topology. Every key of one API key shares
a `{hash tag}`, so each limiter script touches one slot and runs on that slot's master;
redis-py routes it there and does the rest: `MOVED` (the slot map is refreshed), `ASK`
(`ASKING` + the command on the importing node while a slot migrates), `CLUSTERDOWN` /
`TRYAGAIN`, and after a lost connection (a master died) a topology refresh and one more
attempt, which finds the promoted replica once the cluster has voted. Until then the
call fails like any unreachable Redis, and `limits_backend_failure` decides.

Why redis-py here when single-node Redis goes through `gateway.limits.resp`: measured on
one box (`python -m bench.limits_cost`, CPU of the calling process per admission), the
Cluster client costs about 100 µs sequentially and 60 µs in bursts of 50, where the RESP
client costs about 40 and 10 µs; slot routing inside the RESP client (CRC16, one pipelined
connection per master, MOVED/ASK/failover handling) would recover most of that, at the
price of owning and testing a second Cluster client. Cluster users get redis-py's
well-kept one; the single-node path keeps its speed.

The limiter packs each call once as RESP (`Script.head` + `pack_items`); here the packed
command is read back into its arguments (a few µs) so `RedisLimiter` has one code path.
Calls are not pipelined across a loop turn as on a single node (redis-py takes a pooled
connection per call); `delay` is accepted and ignored.

Deliberately not here: reads from replicas (a limit must read what it wrote), Sentinel,
and databases other than 0 (a Cluster has only db 0).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.limits.resp import Arg, parse

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
_OPTIONS = frozenset({"ssl_ca_certs"})


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
        unknown = sorted(set(query) - _OPTIONS)
        if unknown:
            raise ValueError(
                f"redis_url: option {unknown[0]!r} is not supported with a Cluster "
                f"(supported: {', '.join(sorted(_OPTIONS))})"
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


class _LastInFirstOut(deque[Any]):
    """A node's idle connections, the last one given back handed out first."""

    def append(self, item: Any) -> None:
        self.appendleft(item)


class _Cluster(RedisCluster):
    """redis-py's Cluster client, with its ASK redirection made to work.

    On ASK, redis-py 8.2's asyncio client sends `ASKING` to the importing node on one
    pooled connection, gives that connection back to the end of the node's idle queue and
    sends the command on the connection at its front: with two or more idle connections
    the command goes without ASKING, is answered MOVED back to the old owner, which answers
    ASK again, until "TTL exhausted" (tests/limits/test_redis_cluster.py shows it). The
    node that ASK names is looked up with `get_node`; its idle queue is made last-in
    first-out here, so the command gets the connection that carried ASKING (nothing
    awaits in between). Guarded: anything unexpected leaves redis-py as it is.
    """

    def get_node(
        self, host: str | None = None, port: int | None = None, node_name: str | None = None
    ) -> ClusterNode | None:
        node = super().get_node(host, port, node_name)
        free = getattr(node, "_free", None)
        if type(free) is deque:
            node._free = _LastInFirstOut(free)  # type: ignore[union-attr]
        return node


class ClusterClient:
    """`RespClient`'s API (`send`, `send_nowait`, `call`, `flush`, `aclose`) over redis-py's
    Cluster client. `timeout` bounds connecting and each attempt of a call."""

    def __init__(self, url: str, *, timeout: float = 0.5) -> None:
        self.address = address = ClusterAddress.from_url(url)
        self.timeout = timeout
        self._cluster = _Cluster(
            startup_nodes=[ClusterNode(host, port) for host, port in address.seeds],
            username=address.username,
            password=address.password,
            ssl=address.tls,
            ssl_ca_certs=address.ca_certs,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # One more attempt after a lost connection or CLUSTERDOWN, on the refreshed
            # topology: it finds a promoted replica without waiting; more would make a
            # dead master cost every request several timeouts.
            retry=Retry(NoBackoff(), 1),
            require_full_coverage=True,
        )
        self._tasks: set[asyncio.Task[Any]] = set()

    async def call(self, *args: Arg, delay: float = 0.0) -> Any:
        return await self._cluster.execute_command(*args)

    async def send(self, command: bytes, delay: float = 0.0) -> Any:
        """`call` for a command packed already (read back into its arguments)."""
        return await self._cluster.execute_command(*_unpack(command))

    def send_nowait(self, command: bytes, delay: float = 0.0) -> asyncio.Future[Any] | None:
        task = asyncio.get_running_loop().create_task(self.send(command))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def flush(self) -> None:
        """Nothing waits to be written: each call is sent when made."""

    async def aclose(self) -> None:
        await self._cluster.aclose()


def _unpack(command: bytes) -> Sequence[Any]:
    args, _ = parse(command, 0)
    # redis-py looks commands up by name, as text.
    args[0] = args[0].decode()
    return args  # type: ignore[no-any-return]
