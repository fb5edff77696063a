"""Whether Redis lost its data (a restart without persistence, a flush): then, for the idle
timeout after it, a step of a sequence Redis no longer knows hears that its state was lost
(ABORTED), not that it was never started. Noticed per bucket: in a cluster one master may
lose its data alone."""

from __future__ import annotations

import logging
import time
import uuid

from rnnserve.service.sessions.redis.client import Command, RedisClient, Script
from rnnserve.service.sessions.state import Gone

log = logging.getLogger(__name__)

# KEYS: a bucket's generation. ARGV: a fresh token. The token Redis holds (this one, when it
# had none).
_GENERATION = Script("""
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
""")


class Generation:
    """Whether Redis lost its data since this process first looked: a key in each bucket
    that every process creates when missing, holding a random token. Another token (or
    none) than the one seen means Redis (in a cluster: the master of that bucket) restarted
    empty or was flushed: the sessions it held are lost."""

    def __init__(self, redis: RedisClient, where: str, consequence: str) -> None:
        """`consequence`: what the loss means for the store, for the log line."""
        self._redis = redis
        self._where = where
        self._consequence = consequence
        self.tokens: list[bytes | None] = [None] * redis.keys.buckets  # the ones seen last
        self._lost_at: list[float | None] = [None] * redis.keys.buckets  # time.time()

    async def check(self) -> list[int]:
        """The buckets whose data was lost since the last check (logged once per loss)."""
        space = self._redis.keys
        token = uuid.uuid4().hex
        found = await self._redis.run(
            [
                Command.call(_GENERATION, [space.prefix(bucket) + "generation"], [token])
                for bucket in range(space.buckets)
            ]
        )
        lost = [
            bucket
            for bucket, (seen, now) in enumerate(zip(self.tokens, found, strict=True))
            if seen is not None and now != seen
        ]
        self.tokens = list(found)
        if lost:
            now = time.time()
            for bucket in lost:
                self._lost_at[bucket] = now
            log.warning(
                "Redis at %s lost its data (it restarted without persistence, or was flushed"
                "%s): %s",
                self._where,
                "" if space.buckets == 1 else f"; {len(lost)} of {space.buckets} buckets",
                self._consequence,
            )
        return lost

    def noticed(self, name: str) -> float | None:
        """When (time.time()) this process noticed that the bucket of the sequence named
        `name` lost its data last; None if it never did."""
        return self._lost_at[self._redis.keys.bucket(name)]

    def lost(self, name: str, within_s: float) -> Gone | None:
        """The tombstone of a sequence (named `name`) Redis no longer knows, when its
        bucket lost its data within the last `within_s` seconds (such a sequence most likely
        lived there)."""
        lost_at = self._lost_at[self._redis.keys.bucket(name)]
        if lost_at is None or time.time() - lost_at > within_s:
            return None
        at = time.strftime("%H:%M:%S", time.gmtime(lost_at))
        return Gone(
            "lost",
            f"Redis at {self._where} lost its data at {at} UTC (it restarted without "
            "persistence, or was flushed)",
        )
