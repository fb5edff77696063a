"""Reading Redis behind the stores' backs, on one redis-server or a Redis Cluster alike."""

from __future__ import annotations

import redis
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
