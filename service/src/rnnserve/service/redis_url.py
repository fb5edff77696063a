"""Redis URLs: one server (`redis://`, `rediss://`, `unix://`) or a Redis Cluster
(`redis+cluster://` or `rediss+cluster://` and any node's address). Below the settings,
which check a cluster URL, and the Redis client (sessions/redis/client.py), which connects
to what a URL names."""

from __future__ import annotations

from urllib.parse import urlsplit

# A cluster URL's scheme -> the scheme redis-py takes for the node it names.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0] in CLUSTER_SCHEMES


def where(url: str) -> str:
    """host:port/db of a Redis URL, without its credentials: what logs and errors name."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}{parts.path or '/0'}"


def check_url(url: str) -> None:
    """A cluster URL names database 0 or none: a cluster has no other (ValueError)."""
    if not is_cluster_url(url):
        return
    path = url.split("://", 1)[1].split("?", 1)[0].partition("/")[2]
    if path not in ("", "0"):
        raise ValueError(f"a Redis Cluster has only database 0, not {path!r}: end the URL with /0")
