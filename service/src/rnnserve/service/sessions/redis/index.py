"""The index of a namespace's sessions in Redis, kept per bucket beside the states it
indexes (keys.py), which both Redis stores keep and count: by deadline, for the session
count and so that exactly one process reports each expiry; by name, which counts each
principal's sessions (their names share a prefix); by model version, which
`rnnserve_sessions_active` counts when scraped (census.py). INDEX and UNINDEX are the Lua
that the stores' scripts share to keep it, atomically with the states.
"""

from __future__ import annotations

import hashlib
import json

from rnnserve.service.sessions.redis.client import Command, RedisClient
from rnnserve.service.sessions.redis.keys import principal_prefix

# Every script touches the keys of one bucket (keys.py): one hash slot in a cluster.
# Lua shared by the scripts that drop sessions from the index. KEYS[1..3] are the bucket's
# index: by deadline, by name, by model version.
UNINDEX = """
local function unindex(member)
  redis.call('ZREM', KEYS[1], member)
  redis.call('ZREM', KEYS[2], member)
  redis.call('ZREM', KEYS[3], member)
end
"""
# Lua shared by the scripts that index sessions: KEYS[1..3] as above, KEYS[4] the bucket's
# version tags (tag -> the model version it stands for).
INDEX = """
local function index(member, deadline, tag, version)
  redis.call('ZADD', KEYS[1], deadline, member)
  redis.call('ZADD', KEYS[2], 0, member)
  redis.call('ZADD', KEYS[3], tag, member)
  redis.call('HSET', KEYS[4], tag, version)
end
"""


def version_tag(model: str, version: str) -> int:
    """The score of a model version's sessions in the index by model version: 48 bits of a
    hash, exact in a float."""
    digest = hashlib.blake2b(json.dumps([model, version]).encode(), digest_size=6).digest()
    return int.from_bytes(digest, "big")


class SessionIndex:
    """The Redis keys that index a namespace's sessions, in each bucket: `sessions` (by
    deadline), `names` (every member at score 0, so that ZLEXCOUNT counts one principal's)
    and `versions` (by the tag of their model version; the hash `version-tags` names each
    tag's version). Counts add up the buckets' (one round trip per node)."""

    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis

    def by_deadline(self, bucket: int) -> str:
        return self.redis.keys.prefix(bucket) + "sessions"

    def by_name(self, bucket: int) -> str:
        return self.redis.keys.prefix(bucket) + "names"

    def by_version(self, bucket: int) -> str:
        return self.redis.keys.prefix(bucket) + "versions"

    def tags(self, bucket: int) -> str:
        return self.redis.keys.prefix(bucket) + "version-tags"

    def keys(self, bucket: int) -> list[str]:
        """The sorted sets, in the order scripts take them (KEYS[1..3], UNINDEX)."""
        return [self.by_deadline(bucket), self.by_name(bucket), self.by_version(bucket)]

    async def count(self, principal: str | None = None) -> int:
        buckets = range(self.redis.keys.buckets)
        if principal is None:
            commands = [Command.of("ZCARD", self.by_deadline(bucket)) for bucket in buckets]
        else:
            prefix = principal_prefix(principal)
            # Names are ASCII JSON (below 0x7f): the principal's lie in [prefix, prefix\x7f).
            commands = [
                Command.of("ZLEXCOUNT", self.by_name(bucket), f"[{prefix}", f"({prefix}\x7f")
                for bucket in buckets
            ]
        return sum(await self.redis.run(commands))

    async def by_versions(self) -> dict[tuple[str, str], int]:
        """Sessions by model version, over the buckets (two round trips per node)."""
        buckets = range(self.redis.keys.buckets)
        tags = await self.redis.run([Command.of("HGETALL", self.tags(b)) for b in buckets])
        counted = [(b, tag, version) for b in buckets for tag, version in tags[b].items()]
        counts = await self.redis.run(
            [Command.of("ZCOUNT", self.by_version(b), tag, tag) for b, tag, _ in counted]
        )
        active: dict[tuple[str, str], int] = {}
        for (_, _, version), count in zip(counted, counts, strict=True):
            model, number = json.loads(version)
            active[model, number] = active.get((model, number), 0) + count
        return active
