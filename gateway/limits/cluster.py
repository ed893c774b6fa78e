"""The limiter's Redis Cluster client: redis-py's `RedisCluster` for topology and every
irregular case, one pipelined RESP connection per master for the steady state.

`redis_url: redis+cluster://[[user]:password@]host:port[,host:port...]` (or
`rediss+cluster://`, TLS; `?ssl_ca_certs=/path/ca.pem`) selects it: the hosts are seed
nodes, any one reachable is enough to learn the topology. Every key of one API key shares
a `{hash tag}`, so each limiter script touches one slot and runs on that slot's master.

- A script call whose first key's master is known goes over that master's `RespClient`
  (`gateway.limits.resp`: pipelined, timeouts, the single-node path's cost).
- Anything else goes through redis-py's Cluster client, which does the hard parts: the
  first call of a key (its master is learnt from redis-py's slot map afterwards), a call
  answered MOVED / ASK / TRYAGAIN / CLUSTERDOWN / READONLY or refused a connection there
  (none of which ran it: sent again through redis-py, which follows the redirection,
  sends `ASKING` while a slot migrates, or refreshes the topology), SCRIPT LOAD (to every
  master) and INFO. redis-py retries once after a lost connection, on the refreshed
  topology, so a promoted replica is found as soon as the cluster has voted.
- A call whose connection is lost or times out after it was sent is not sent again (it
  may have run: an admission would count twice); it fails like any unreachable Redis,
  `limits_backend_failure` decides, and the key's next call goes through redis-py.

Why this split, measured in one run (`python -m bench.limits_cost`, CPU of the calling
process per admit + settle, medians of 3 rounds of 5,000, loopback): one Redis over the
RESP client 52 µs one call at a time and 15 µs in bursts of 50; a Cluster through this
client 69 and 23 µs; the same Cluster with every call through redis-py's Cluster client
191 and 157 µs (its per-call pool checkout, retry wrapper and parser). Slot routing of our
own for the irregular cases too would mean owning a second Cluster client (topology,
redirections, failover) for no gain in the steady state.

redis-py 8.2's asyncio client sends the `ASKING` of an ASK redirection on one pooled
connection and the command on another when the node has two idle ones, so the command is
bounced until "TTL exhausted"; `_Cluster` fixes that (see there; a test shows both).

Deliberately not here: reads from replicas (a limit must read what it wrote), Sentinel,
and databases other than 0 (a Cluster has only db 0).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.limits.resp import Arg, RespClient, parse
from gateway.redis_url import ClusterAddress


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
    """`RespClient`'s API (`send`, `send_nowait`, `call`, `idle`, `flush`, `aclose`) on a Redis
    Cluster. `timeout` bounds connecting and each attempt of a call.

    A script call whose first key's master is known goes over that master's own
    `RespClient` (pipelined, as on one Redis); a call that meets anything else there
    (MOVED, ASK, CLUSTERDOWN, a lost connection, a timeout) is sent again through redis-py,
    which follows the redirection or refreshes the topology, and the key's route is looked
    up afresh from redis-py's refreshed map on its next call. Everything that is not a
    script call (SCRIPT LOAD to every master, INFO) goes through redis-py.
    """

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
        self._masters: dict[tuple[str, int], RespClient] = {}
        """One pipelined connection per master, made on first use."""
        self._routes: dict[bytes, RespClient] = {}
        """First key of a script call -> its master's client (forgotten on a redirect)."""
        self._tasks: set[asyncio.Task[Any]] = set()

    async def call(self, *args: Arg, delay: float = 0.0) -> Any:
        return await self._cluster.execute_command(*args)

    async def send(self, command: bytes, delay: float = 0.0) -> Any:
        """A packed command: a script call over its master's connection when the route is
        known, through redis-py otherwise (and after any error but a script's own)."""
        key = _first_key(command)
        client = self._routes.get(key) if key is not None else None
        if client is not None:
            try:
                return await client.send(command, delay)
            except ResponseError as exc:
                if not str(exc).startswith(_REDIRECTED):
                    raise  # the script's own error (NOSCRIPT: Script.run loads it)
                self._routes.pop(key, None)  # type: ignore[arg-type]
            except (RedisConnectionError, RedisTimeoutError):
                # The command may have run before the connection went: sending it again
                # could count an admission twice. This call fails (limits_backend_failure
                # decides); the next one asks redis-py, which refreshes the topology.
                self._routes.pop(key, None)  # type: ignore[arg-type]
                raise
            except OSError:
                self._routes.pop(key, None)  # type: ignore[arg-type]  # refused: never sent
        reply = await self._cluster.execute_command(*_unpack(command))
        if key is not None:
            self._route(key)
        return reply

    def send_nowait(self, command: bytes, delay: float = 0.0) -> asyncio.Future[Any] | None:
        task = asyncio.get_running_loop().create_task(self.send(command, delay))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def idle(self) -> bool:
        """No call on its way (`send_nowait`'s tasks) and every master's connection idle
        (see `RespClient.idle`)."""
        return not self._tasks and all(client.idle() for client in self._masters.values())

    def flush(self) -> None:
        for client in self._masters.values():
            client.flush()

    async def aclose(self) -> None:
        masters, self._masters = self._masters, {}
        self._routes.clear()
        for client in masters.values():
            await client.aclose()
        await self._cluster.aclose()

    def _route(self, key: bytes) -> None:
        """Learn `key`'s master from redis-py's map (fresh after the call just made)."""
        try:
            node = self._cluster.get_node_from_key(key)  # type: ignore[arg-type]
        except RedisClusterException:
            return
        if node is None:
            return
        where = (node.host, int(node.port))
        client = self._masters.get(where)
        if client is None:
            client = RespClient(self._node_url(*where), timeout=self.timeout)
            self._masters[where] = client
        self._routes[key] = client

    def _node_url(self, host: str, port: int) -> str:
        a = self.address
        auth = ""
        if a.password is not None:
            auth = f"{quote(a.username or '', safe='')}:{quote(a.password, safe='')}@"
        elif a.username:
            auth = f"{quote(a.username, safe='')}@"
        where = f"[{host}]" if ":" in host else host
        query = f"?ssl_ca_certs={quote(a.ca_certs)}" if a.ca_certs else ""
        return f"{'rediss' if a.tls else 'redis'}://{auth}{where}:{port}{query}"


_REDIRECTED = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN", "READONLY")
"""Replies of a node that did not run the command: it is sent again through redis-py."""


def _first_key(command: bytes) -> bytes | None:
    """The first key of a packed EVALSHA (its fourth bulk string), None for any other
    command or a script call without keys."""
    head = command.find(b"\r\n")
    if head < 0 or not command.startswith(b"\r\n$7\r\nEVALSHA\r\n", head):
        return None
    pos = head + 2
    for index in range(4):
        end = command.index(b"\r\n", pos)
        start = end + 2
        stop = start + int(command[pos + 1 : end])
        if index == 2 and command[start:stop] == b"0":
            return None
        if index == 3:
            return command[start:stop]
        pos = stop + 2
    return None


def _unpack(command: bytes) -> Sequence[Any]:
    args, _ = parse(command, 0)
    # redis-py looks commands up by name, as text.
    args[0] = args[0].decode()
    return args  # type: ignore[no-any-return]
