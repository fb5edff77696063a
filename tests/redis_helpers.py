"""Reading Redis behind the stores' backs, on one redis-server or a Redis Cluster alike,
and a redis-server of a test's own, which it may stop, kill and start again."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import redis
from polling import eventually
from redis.cluster import RedisCluster

from rnnserve.service.redis_url import CLUSTER_SCHEMES, is_cluster_url


def sync_client(url: str) -> redis.Redis | RedisCluster:
    """A synchronous client of the Redis (or the cluster) that `url` names."""
    if is_cluster_url(url):
        scheme, rest = url.split("://", 1)
        return RedisCluster.from_url(f"{CLUSTER_SCHEMES[scheme]}://{rest}")
    return redis.Redis.from_url(url)


def command_calls(url: str, leave_out: tuple[str, ...]) -> dict[str, int]:
    """Commands Redis has run (the masters of a cluster, added up), by name, leaving out
    those whose INFO name starts with one of `leave_out`."""
    client = sync_client(url)
    if isinstance(client, RedisCluster):
        per_node = client.info("commandstats", target_nodes=RedisCluster.PRIMARIES).values()
    else:
        per_node = [client.info("commandstats")]
    client.close()
    calls: dict[str, int] = {}
    for stats in per_node:
        for name, entry in stats.items():
            if not name.startswith(leave_out):
                calls[name] = calls.get(name, 0) + entry["calls"]
    return calls


def keys_like(url: str, pattern: str) -> list[bytes]:
    """The keys matching `pattern`, on every master of a cluster."""
    client = sync_client(url)
    if isinstance(client, RedisCluster):
        found = client.keys(pattern, target_nodes=RedisCluster.PRIMARIES)
    else:
        found = client.keys(pattern)
    client.close()
    return found


class RedisServer:
    """A redis-server of the test's own on `port`, without persistence unless `persistent`
    (an append-only file, written before each reply): it can be paused (SIGSTOP), killed
    (SIGKILL) and started again on the same port, empty or with what it had written."""

    def __init__(self, binary: str, port: int, directory: Path, persistent: bool = False) -> None:
        self.binary, self.port, self.directory = binary, port, directory
        self.persistent = persistent
        self.url = f"redis://127.0.0.1:{port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--save", "",
                "--appendonly", "yes" if self.persistent else "no", "--appendfsync", "always",
                "--daemonize", "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url)
        try:
            eventually(lambda: self._answers(client), f"redis-server on {self.port} answers")
        finally:
            client.close()

    def _answers(self, client: redis.Redis) -> bool:
        assert self.process is not None and self.process.poll() is None, "redis-server exited"
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    def pause(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def pause_writes(self, seconds: float) -> None:
        """Holds every command that may write (scripts too) for `seconds` (CLIENT PAUSE
        WRITE): reads are answered, writes wait in Redis and are applied after."""
        client = redis.Redis.from_url(self.url)
        try:
            client.execute_command("CLIENT", "PAUSE", round(seconds * 1000), "WRITE")
        finally:
            client.close()

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.resume()
            self.process.terminate()
            self.process.wait(timeout=30)
