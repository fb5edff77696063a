"""A Redis Cluster of real redis-server processes on 127.0.0.1, for the benchmarks and the
tests: masters with a replica each, made with `redis-cli --cluster create` as an operator
makes one, and the means to fail one over for real (SIGKILL a master, start it again).

    with LocalCluster(workdir) as cluster:     # 3 masters, 3 replicas
        url = cluster.url                      # redis+cluster://127.0.0.1:PORT/0
        port = cluster.master_of(key_slot(b"some key"))
        cluster.kill(port)                     # SIGKILL
        cluster.wait_failed_over(port)         # a replica took its slots
        cluster.restart(port)                  # it comes back as that replica's replica

Every node listens on 127.0.0.1 only, on free ports below the ephemeral range (its cluster
bus on a second one), keeps no snapshot or append-only file (a restarted node syncs from
its master) and says a node that is silent for `node_timeout_ms` failed. While the cluster
is made, a master sends its replica its data at once; made, it waits Redis's default 5 s
for more replicas first, so that a failover meets what it meets in an operator's cluster.
"""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnnserve.bench.servers import free_port
from rnnserve.protocol.errors import UsageError

SLOTS = 16384
SYNC_DELAY_S = 5  # Redis's default repl-diskless-sync-delay
START_TIMEOUT_S = 60.0
EPHEMERAL_PORTS = Path("/proc/sys/net/ipv4/ip_local_port_range")


@dataclass
class Node:
    port: int
    bus_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class LocalCluster:
    def __init__(
        self,
        workdir: Path,
        masters: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 1000,
        ports: Callable[[], int] | None = None,
    ) -> None:
        """`ports` chooses each node's port and bus port: by default at random below the
        ephemeral range; processes that start servers of their own side by side (parallel
        tests) pass the function they choose those servers' ports with, so that no two
        choices meet."""
        self.workdir = workdir
        self.masters, self.replicas = masters, replicas
        self.node_timeout_ms = node_timeout_ms
        self.ports = ports or _node_port
        self.nodes: list[Node] = []

    @property
    def url(self) -> str:
        """The URL rnnserve's stores take: any node's address; the client finds the rest."""
        return f"redis+cluster://{self.nodes[0].address}/0"

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        binary = _binary("redis-server")
        for index in range(self.masters * (1 + self.replicas)):
            directory = self.workdir / f"redis-node-{index}"
            directory.mkdir(parents=True, exist_ok=True)
            node = Node(self.ports(), self.ports(), directory)
            self.nodes.append(node)
            self._launch(binary, node, sync_delay_s=0)
        for node in self.nodes:
            self._wait_answers(node)
        create = [
            _binary("redis-cli"), "--cluster", "create", *(node.address for node in self.nodes),
            "--cluster-replicas", str(self.replicas), "--cluster-yes",
        ]  # fmt: skip
        made = subprocess.run(create, capture_output=True, text=True, timeout=START_TIMEOUT_S)
        if made.returncode != 0:
            raise UsageError(f"redis-cli --cluster create failed: {made.stdout}{made.stderr}")
        self.wait_healthy()
        for node in self.nodes:
            self._ask(node.port, "CONFIG", "SET", "repl-diskless-sync-delay", str(SYNC_DELAY_S))

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.terminate()
        for node in self.nodes:
            if node.process is not None:
                try:
                    node.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                    node.process.wait()

    # Failing over.

    def kill(self, port: int) -> None:
        """SIGKILL the node on `port`: no goodbye to its peers or its clients."""
        node = self._node(port)
        assert node.process is not None
        node.process.send_signal(signal.SIGKILL)
        node.process.wait()

    def signal(self, port: int, signum: int) -> None:
        """Sends the node on `port` a signal: SIGSTOP pauses it (a node that does not
        answer), SIGCONT resumes it."""
        process = self._node(port).process
        assert process is not None
        process.send_signal(signum)

    def restart(self, port: int) -> None:
        """Starts the node on `port` again with its cluster configuration: a master that was
        failed over comes back as a replica of the one that replaced it."""
        node = self._node(port)
        self._launch(_binary("redis-server"), node, SYNC_DELAY_S)
        self._wait_answers(node)

    def wait_failed_over(self, port: int, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until the surviving nodes agree that every slot is served by a live master again
        (the killed node's replica was promoted)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(
                self._cluster_ok(node) and port not in self._master_ports(node)
                for node in self._live()
            ):
                return
            time.sleep(0.05)
        raise AssertionError(f"no replica took over from 127.0.0.1:{port} in {timeout_s} s")

    def wait_healthy(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until every node is up, says the cluster is ok, knows every other node, and every
        replica is in sync with its master."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(self._healthy(node) for node in self.nodes):
                return
            time.sleep(0.05)
        raise UsageError(f"the local Redis Cluster was not healthy after {timeout_s} s")

    # What the cluster holds.

    def master_ports(self) -> list[int]:
        return sorted(self._master_ports(self._live()[0]))

    def slot_ranges(self) -> list[tuple[int, int, int]]:
        """(first slot, last slot, port of its master) of every range of slots."""
        return self._slot_ranges(self._live()[0])

    def master_of(self, slot: int, ranges: list[tuple[int, int, int]] | None = None) -> int:
        """The port of the master serving `slot` (in `ranges`, when given, else now)."""
        for start, end, port in ranges or self.slot_ranges():
            if start <= slot <= end:
                return port
        raise AssertionError(f"no master serves slot {slot}")

    def replica_of(self, master: int) -> int:
        """The port of a replica of the master on `master`."""
        for slave in self._info(master, "replication").values():
            if isinstance(slave, dict) and "port" in slave:
                return int(slave["port"])
        raise AssertionError(f"127.0.0.1:{master} has no replica")

    def used_memory(self, masters_only: bool = True) -> int:
        """Bytes Redis's allocator holds (INFO memory's used_memory), summed over the
        masters (or every node)."""
        ports = self.master_ports() if masters_only else self._live()
        return sum(int(self._info(port, "memory")["used_memory"]) for port in ports)

    def cpu_seconds(self) -> float:
        """CPU time the masters have used (INFO cpu, system and user), summed."""
        return sum(
            float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
            for info in (self._info(port, "cpu") for port in self.master_ports())
        )

    def command_calls(self) -> int:
        """Commands the masters have run (INFO commandstats), summed."""
        total = 0
        for port in self.master_ports():
            for name, stats in self._info(port, "commandstats").items():
                if name.startswith("cmdstat_"):
                    total += stats["calls"]
        return total

    # Internals.

    def _launch(self, binary: str, node: Node, sync_delay_s: int) -> None:
        command = [
            binary, "--port", str(node.port), "--bind", "127.0.0.1",
            "--cluster-enabled", "yes", "--cluster-port", str(node.bus_port),
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--dir", str(node.directory), "--save", "", "--appendonly", "no",
            "--repl-diskless-sync-delay", str(sync_delay_s), "--daemonize", "no",
        ]  # fmt: skip
        log = (node.directory / "redis.log").open("ab")
        with log:
            node.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def _wait_answers(self, node: Node) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert node.process is not None
            if node.process.poll() is not None:
                raise UsageError(
                    f"redis-server on {node.address} exited with {node.process.returncode}: "
                    f"see {node.directory / 'redis.log'}"
                )
            if self._ask(node.port, "PING"):
                return
            time.sleep(0.05)
        raise UsageError(f"redis-server on {node.address} never answered")

    def _live(self) -> list[int]:
        return [n.port for n in self.nodes if n.process is not None and n.process.poll() is None]

    def _node(self, port: int) -> Node:
        return next(node for node in self.nodes if node.port == port)

    def _healthy(self, node: Node) -> bool:
        if node.port not in self._live() or not self._cluster_ok(node.port):
            return False
        if self._ask(node.port, "CLUSTER INFO").get("cluster_known_nodes") != str(len(self.nodes)):
            return False
        replication = self._info(node.port, "replication")
        return replication.get("role") == "master" or replication.get("master_link_status") == "up"

    def _cluster_ok(self, port: int) -> bool:
        return bool(self._ask(port, "CLUSTER INFO").get("cluster_state") == "ok")

    def _master_ports(self, port: int) -> set[int]:
        return {master for *_, master in self._slot_ranges(port)}

    def _slot_ranges(self, port: int) -> list[tuple[int, int, int]]:
        """(first slot, last slot, master port) of every range, as the node on `port` sees
        them."""
        ranges = self._ask(port, "CLUSTER SLOTS") or []
        return [(int(first), int(last), int(master[1])) for first, last, master, *_ in ranges]

    def _info(self, port: int, section: str) -> dict[str, Any]:
        """INFO's fields as redis-py parses them: numbers, text, or a dict (a replica, a
        command's stats); {} when the node does not answer."""
        return self._ask(port, "INFO", section) or {}

    @staticmethod
    def _ask(port: int, *command: str) -> Any:
        """The node's answer, parsed by redis-py; None when it does not answer."""
        import redis

        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
        try:
            return client.execute_command(*command)  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
        except redis.RedisError:
            return None
        finally:
            client.close()


def _binary(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise UsageError(f"{name} not found: install it (apt-get install redis-server)")
    return found


def _node_port() -> int:
    """A free port below the kernel's ephemeral range. A node killed in a test restarts on
    its own port, which an outgoing connection could otherwise have taken meanwhile as its
    source port ("Address already in use"); below the range only a listener can take it."""
    if not EPHEMERAL_PORTS.exists():
        return free_port()
    lowest_ephemeral = int(EPHEMERAL_PORTS.read_text().split()[0])
    for _ in range(100):
        port = random.randrange(10_000, lowest_ephemeral)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    return free_port()
