"""A throwaway Redis Cluster for tests: real redis-server processes, no mocks.

`RedisCluster(masters=3, replicas_per_master=1)` starts that many `redis-server
--cluster-enabled yes` processes (each a `RedisServer` on free ports, its bus port chosen
free too), joins them with `redis-cli --cluster create`, and waits until every node says
`cluster_state:ok` and every replica's link to its master is up, so a test can fail over
at once. `url` is what the gateway is given (`redis+cluster://` with two seed nodes).
`failover()` promotes a replica the way an operator would (`CLUSTER FAILOVER`); `kill()`
and `restart()` take a node away and bring it back with its `nodes.conf`, so it rejoins.

A missing `redis-cli` (Debian's redis-tools) fails the run with a clear message, like a
missing redis-server does. Deliberately not here: Sentinel, TLS, and any topology other
than masters with an equal number of replicas each.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from types import TracebackType

import pytest
import redis

from tests.support.redis_server import RedisServer, free_port

REDIS_CLI = "/usr/bin/redis-cli"


class RedisCluster:
    def __init__(self, masters: int = 3, replicas_per_master: int = 1) -> None:
        if shutil.which(REDIS_CLI) is None:
            pytest.fail(
                f"{REDIS_CLI} not found: the Cluster tests need it to create a cluster "
                "(apt-get install redis-tools).",
                pytrace=False,
            )
        self.masters = masters
        self.replicas_per_master = replicas_per_master
        self.nodes = [self._node() for _ in range(masters * (1 + replicas_per_master))]

    def _node(self) -> RedisServer:
        ports = {node.port for node in getattr(self, "nodes", [])}
        while True:
            node = RedisServer(
                **{
                    "cluster-enabled": "yes",
                    "cluster-port": str(free_port()),
                    "cluster-config-file": "nodes.conf",
                    # A dead master is replaced within about two seconds.
                    "cluster-node-timeout": "1000",
                    "cluster-replica-validity-factor": "0",
                }
            )
            if node.port not in ports and node.extra["cluster-port"] != str(node.port):
                return node
            node.close()

    def _start_node(self, index: int) -> None:
        """Start a node; a port taken meanwhile by another process gets it new ports."""
        for attempt in range(3):
            try:
                self.nodes[index].start()
                return
            except pytest.fail.Exception:
                if attempt == 2:
                    raise
                self.nodes[index].close()
                self.nodes[index] = self._node()

    @property
    def url(self) -> str:
        seeds = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes[:2])
        return f"redis+cluster://{seeds}"

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, decode_responses=True, socket_timeout=5)

    def start(self, timeout: float = 30.0) -> None:
        for index in range(len(self.nodes)):
            self._start_node(index)
        create = subprocess.run(
            [
                REDIS_CLI,
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in self.nodes),
                "--cluster-replicas",
                str(self.replicas_per_master),
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if create.returncode != 0:
            self.close()
            pytest.fail(f"redis-cli --cluster create failed: {create.stdout[-2000:]}")
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every running node sees the cluster ok, with one master per slot range and
        every replica's link up."""
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if time.monotonic() > deadline:
                pytest.fail("the Redis Cluster did not become healthy")
            time.sleep(0.05)

    def _healthy(self) -> bool:
        try:
            for node in self.nodes:
                if not node.running:
                    continue
                with self.client(node.port) as c:
                    # Separate words: redis-py parses "CLUSTER INFO" replies, not "CLUSTER".
                    if "cluster_state:ok" not in c.execute_command("CLUSTER", "INFO"):
                        return False
                    info = c.info("replication")
                    if info["role"] == "slave" and info.get("master_link_status") != "up":
                        return False
            return len(self.master_ports()) == self.masters
        except redis.RedisError:
            return False

    def cluster_nodes(self) -> list[dict[str, str]]:
        """`CLUSTER NODES` as seen by a running node: id, port, flags, master id, slots."""
        node = next(n for n in self.nodes if n.running)
        with self.client(node.port) as c:
            text: str = c.execute_command("CLUSTER", "NODES")
        rows = []
        for line in text.splitlines():
            fields = line.split()
            rows.append(
                {
                    "id": fields[0],
                    "port": fields[1].split(":")[1].split("@")[0],
                    "flags": fields[2],
                    "master": fields[3],
                    "slots": " ".join(fields[8:]),
                }
            )
        return rows

    def master_ports(self) -> list[int]:
        return sorted(
            int(row["port"])
            for row in self.cluster_nodes()
            if "master" in row["flags"] and "fail" not in row["flags"] and row["slots"]
        )

    def master_of(self, slot: int) -> int:
        with self.client(self.master_ports()[0]) as c:
            for start, end, master, *_ in c.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(master[1])
        raise AssertionError(f"slot {slot} is not served")

    def replica_of(self, master_port: int) -> int:
        rows = self.cluster_nodes()
        master_id = next(r["id"] for r in rows if int(r["port"]) == master_port)
        return next(int(r["port"]) for r in rows if r["master"] == master_id)

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def failover(self, replica_port: int, timeout: float = 15.0) -> None:
        """`CLUSTER FAILOVER` on a replica: it becomes its master's master, the old master
        its replica. Returns once the cluster agrees."""
        with self.client(replica_port) as c:
            c.execute_command("CLUSTER", "FAILOVER")
        deadline = time.monotonic() + timeout
        # Every node's slot map must name it, not only the node asked first: gossip reaches
        # the others a moment later, and a busy machine makes that moment long.
        while not self._serves_slots_everywhere(replica_port):
            if time.monotonic() > deadline:
                pytest.fail(f"node {replica_port} was not promoted")
            time.sleep(0.05)
        self.wait_healthy(timeout)

    def _serves_slots_everywhere(self, port: int) -> bool:
        try:
            for node in self.nodes:
                if not node.running:
                    continue
                with self.client(node.port) as c:
                    slots = c.execute_command("CLUSTER", "SLOTS")
                if not any(int(master[1]) == port for _, _, master, *_ in slots):
                    return False
        except redis.RedisError:
            return False
        return True

    def kill(self, port: int, timeout: float = 20.0) -> int:
        """Kill master `port` (as a crash would) and wait until its replica is promoted;
        returns the new master's port. `restart(port)` brings the node back (as a
        replica)."""
        replica = self.replica_of(port)
        self.node(port).stop()
        deadline = time.monotonic() + timeout
        while replica not in self._ports_seen_as_masters(replica) or not (
            self._serves_slots_everywhere(replica)
        ):
            if time.monotonic() > deadline:
                pytest.fail(f"no replica of {port} was promoted")
            time.sleep(0.05)
        return replica

    def _ports_seen_as_masters(self, asked: int) -> list[int]:
        try:
            with self.client(asked) as c:
                text: str = c.execute_command("CLUSTER", "NODES")
        except redis.RedisError:
            return []
        return [
            int(line.split()[1].split(":")[1].split("@")[0])
            for line in text.splitlines()
            if "master" in line.split()[2] and "fail" not in line.split()[2]
        ]

    def restart(self, port: int, timeout: float = 30.0) -> None:
        self.node(port).start()
        self.wait_healthy(timeout)

    def node_id(self, port: int) -> str:
        return next(r["id"] for r in self.cluster_nodes() if int(r["port"]) == port)

    def migrate_slot_keys(self, slot: int, source: int, target: int) -> None:
        """Start moving `slot` from master `source` to master `target` and move its keys,
        as `redis-cli --cluster reshard` does, but stop before handing the slot over: the
        slot stays `source`'s, which answers ASK for it from now on."""
        source_id, target_id = self.node_id(source), self.node_id(target)
        with self.client(target) as t:
            t.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        with self.client(source) as s:
            s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            keys = s.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
            if keys:
                s.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)

    def finish_slot_migration(self, slot: int, target: int, timeout: float = 15.0) -> None:
        """Hand `slot` to master `target` (`CLUSTER SETSLOT slot NODE`), on every master,
        and wait until every running node says so."""
        target_id = self.node_id(target)
        masters = [target, *(p for p in self.master_ports() if p != target)]
        for port in masters:
            with self.client(port) as c:
                c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        deadline = time.monotonic() + timeout
        while not all(self._serves(node.port, slot, target) for node in self.nodes if node.running):
            if time.monotonic() > deadline:
                pytest.fail(f"slot {slot} did not move to {target}")
            time.sleep(0.05)

    def _serves(self, asked: int, slot: int, master: int) -> bool:
        with self.client(asked) as c:
            for start, end, owner, *_ in c.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(owner[1]) == master
        return False

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> RedisCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
