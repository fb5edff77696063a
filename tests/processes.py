"""The processes of a server under test: free ports to start it on, and from /proc a
`--workers` server's workers, whether one is alive or listening, the CPUs its threads
may run on and the CPU time one has used, resident memory and its peak."""

from __future__ import annotations

import itertools
import os
import random
import socket
from pathlib import Path

# Ports below the kernel's ephemeral range, from which bind(("", 0)) and every outgoing
# connection take theirs: a port chosen here cannot be taken by a connection before the
# server it was chosen for binds it. Each pytest-xdist worker (gw0, gw1, ...) walks a block
# of its own, so two workers never choose the same port; the walk starts at random, so two
# test runs at once rarely meet either.
EPHEMERAL_PORTS = Path("/proc/sys/net/ipv4/ip_local_port_range")
PORTS_FROM, BLOCK = 10_000, 1_500
_blocks = (int(EPHEMERAL_PORTS.read_text().split()[0]) - PORTS_FROM) // BLOCK
_worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
_block_start = PORTS_FROM + _worker % _blocks * BLOCK
_offsets = itertools.count(random.randrange(BLOCK))


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on, not handed out before in this worker
    (until its block wraps round)."""
    for _ in range(BLOCK):
        port = _block_start + next(_offsets) % BLOCK
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use
        return port
    raise AssertionError(f"no free port in {_block_start}..{_block_start + BLOCK - 1}")


def thread_cpus(pid: int) -> dict[int, set[int]]:
    """Each thread of process `pid`, and the CPUs it may run on (`cpu_affinity`)."""
    return {
        int(thread): os.sched_getaffinity(int(thread)) for thread in os.listdir(f"/proc/{pid}/task")
    }


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """The CPU time (user and system) process `pid` has used, or one `thread` of it."""
    stat = Path(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_pids(supervisor: int) -> list[int]:
    """The workers (spawned processes) of a `--workers` server."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return [int(pid) for pid in children if b"spawn_main" in _cmdline(int(pid))]


def listening(pid: int, port: int) -> bool:
    """Whether process `pid` holds a TCP socket listening on `port`: the workers of a
    `--workers` server listen one after the other once their start gate opens, and a client
    that connects before the last does reaches the others only."""
    try:
        links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
    except (FileNotFoundError, ProcessLookupError):
        return False
    sockets = {link[len("socket:[") : -1] for link in links if link.startswith("socket:[")}
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()  # local address "ADDR:PORT" in hex, state 0A: LISTEN
            here = int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A"
            if here and fields[9] in sockets:  # the socket's inode
                return True
    return False


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""


def alive(pid: int) -> bool:
    # A worker of an exited supervisor is reparented, and reaped, elsewhere: look it up.
    return bool(_cmdline(pid))


def rss_bytes(pid: int) -> int:
    return _status_bytes(pid, "VmRSS")


def peak_rss_bytes(pid: int) -> int:
    """The most resident memory the process has had (the kernel's high-water mark)."""
    return _status_bytes(pid, "VmHWM")


def _status_bytes(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")
