"""Reaping a dead worker: the sessions it held are lost, said at once rather than waited
for. The supervisor declares a worker dead the moment it dies (declare_dead); any worker's
sweep reaps those whose liveness records lapsed (Reaper)."""

from __future__ import annotations

import asyncio
import json
import logging

from rnnserve.service.sessions.owned.held import Held
from rnnserve.service.sessions.owned.liveness import liveness_key, registry_key
from rnnserve.service.sessions.owned.worker import Worker, inbox_key, owned_key, push
from rnnserve.service.sessions.redis.client import Command, RedisClient, Script
from rnnserve.service.sessions.redis.index import UNINDEX, SessionIndex
from rnnserve.service.sessions.redis.records import encode_gone
from rnnserve.service.sessions.state import Gone, tombstone_s

log = logging.getLogger(__name__)

LOST = Gone("lost", "the server process holding it stopped unexpectedly")

# KEYS: the index (3), the worker registry, the dead worker's owned list. ARGV: the dead
# worker, prefix, the tombstone of a lost session, its ttl in ms. Reaps a dead worker in
# one bucket: its sessions there are lost (unindexed, tombstones left). Returns how many it
# held there, or -1 when it is alive after all.
_REAP = Script(
    UNINDEX
    + """
if redis.call('EXISTS', ARGV[2] .. 'worker:' .. ARGV[1]) == 1 then return -1 end
local lost = 0
for _, name in ipairs(redis.call('SMEMBERS', KEYS[5])) do
  if redis.call('GET', ARGV[2] .. 'owner:' .. name) == ARGV[1] then
    redis.call('DEL', ARGV[2] .. 'owner:' .. name, ARGV[2] .. 'state:' .. name)
    unindex(name)
    redis.call('SET', ARGV[2] .. 'ended:' .. name, ARGV[3], 'PX', ARGV[4])
    lost = lost + 1
  end
end
redis.call('DEL', KEYS[5])
redis.call('SREM', KEYS[4], ARGV[1])
return lost
"""
)
# KEYS: an inbox. Empties it; returns the requests it held.
_EMPTY = Script("""
local requests = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
return requests
""")


class Reaper:
    """Reaps the dead workers this worker's sweep finds."""

    def __init__(self, worker: Worker, held: Held) -> None:
        self._worker = worker
        self._held = held

    async def reap(self, dead: str) -> int:
        """Reaps a dead worker (see reap); how many sessions were lost with it."""
        me = self._worker
        lost = await reap(me.redis, me.namespace, dead, self._held.tombstone_ms)
        if lost > 0:
            log.warning("a dead server process held %d sequences: they are lost", lost)
        return lost


async def reap(redis: RedisClient, namespace: str, worker: str, tombstone_ms: int) -> int:
    """Reaps a dead worker (see _REAP) in every bucket, and answers whoever waits for it to
    hand a session over. Returns how many sessions it held, which are lost (0 when it is
    alive after all)."""
    space = redis.keys
    commands = [
        Command.call(
            _REAP,
            [
                *SessionIndex(redis).keys(bucket),
                registry_key(space, bucket),
                owned_key(space, bucket, worker),
            ],
            [worker, space.prefix(bucket), encode_gone(LOST), tombstone_ms],
            retry_safe=False,  # it reports what it reaps, once
        )
        for bucket in range(space.buckets)
    ]
    counts = await redis.run(commands, durable=True)
    waiting = await redis.one(Command.call(_EMPTY, [inbox_key(namespace, worker)]))
    answers = [
        command for request in waiting for command in push(json.loads(request)[1], "1", 60.0)
    ]
    await redis.run(answers)
    return sum(count for count in counts if count > 0)


def declare_dead(
    url: str,
    worker: str,
    idle_timeout_s: float,
    namespace: str = "rnnserve",
    timeout_s: float = 1.0,
) -> int:
    """For the supervisor, the moment a worker died: its liveness records go and it is
    reaped at once (see reap), rather than when the records lapse. Returns how many
    sessions it held, which are lost; raises redis errors (the workers' sweeps reap it
    later then)."""

    async def declare() -> int:
        redis = RedisClient(url, namespace, timeout_s)
        try:
            space = redis.keys
            buckets = range(space.buckets)
            await redis.run([Command.of("DEL", liveness_key(space, b, worker)) for b in buckets])
            return await reap(redis, namespace, worker, round(tombstone_s(idle_timeout_s) * 1000))
        finally:
            await redis.close()

    return asyncio.run(declare())
