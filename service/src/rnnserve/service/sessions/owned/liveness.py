"""Whether a worker lives: its liveness record (`worker:<id>`, lapsing LIVENESS_S after the
worker stops refreshing it) and its registration in the registry of workers (`workers`, which
the sweeps read to find the dead), kept in every bucket: ownership scripts read an owner's
liveness in the session's own bucket."""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from typing import Any

from rnnserve.service.sessions.owned.held import Held
from rnnserve.service.sessions.owned.worker import Worker, owned_key
from rnnserve.service.sessions.redis.client import Command, Script
from rnnserve.service.sessions.redis.index import UNINDEX, SessionIndex
from rnnserve.service.sessions.redis.keys import Keyspace, member
from rnnserve.service.sessions.state import SessionKey

LIVENESS_S = 10.0  # a worker silent this long is dead: its sessions are lost, not waited for

# KEYS: the index (3), my liveness key, the worker registry, my owned list. ARGV: me,
# prefix, deadline, liveness ms, cutoff, members. Keeps me alive and registered, moves the
# deadlines of the members I own (and drops the copies of their states left by my takes),
# drops index entries past the cutoff (states left in Redis that nobody took) and returns
# the members I lost (another worker owns them), the workers that died and the members
# that nobody owns (Redis lost my records: its data, since my last look).
_REFRESH = Script(
    UNINDEX
    + """
redis.call('SET', KEYS[4], '1', 'PX', ARGV[4])
redis.call('SADD', KEYS[5], ARGV[1])
local lost, orphans = {}, {}
for i = 6, #ARGV do
  local owner = redis.call('GET', ARGV[2] .. 'owner:' .. ARGV[i])
  if owner == ARGV[1] then
    redis.call('ZADD', KEYS[1], ARGV[3], ARGV[i])
    redis.call('DEL', ARGV[2] .. 'state:' .. ARGV[i])
  elseif owner then
    table.insert(lost, ARGV[i])
    redis.call('SREM', KEYS[6], ARGV[i])
  else
    table.insert(orphans, ARGV[i])
  end
end
for _, stale in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[5])) do
  unindex(stale)
end
local dead = {}
for _, worker in ipairs(redis.call('SMEMBERS', KEYS[5])) do
  if redis.call('EXISTS', ARGV[2] .. 'worker:' .. worker) == 0 then
    table.insert(dead, worker)
  end
end
return {lost, dead, orphans}
"""
)


def liveness_key(space: Keyspace, bucket: int, worker: str) -> str:
    return f"{space.prefix(bucket)}worker:{worker}"


def registry_key(space: Keyspace, bucket: int) -> str:
    """The set of the workers registered in `bucket`."""
    return space.prefix(bucket) + "workers"


class Liveness:
    """This worker's liveness records and registration, in every bucket: set at its start,
    refreshed by each sweep (which also keeps the deadlines of the sessions it owns, and
    finds those it lost and the workers that died), deleted at a clean stop."""

    def __init__(self, worker: Worker, held: Held) -> None:
        self._worker = worker
        self._held = held
        self._index = SessionIndex(worker.redis)

    def announcing(self) -> list[Command]:
        """The commands that say I live and am registered."""
        me, space = self._worker.id, self._worker.space
        commands = []
        for bucket in range(space.buckets):
            commands += [
                Command.of(
                    "SET", liveness_key(space, bucket, me), 1, "PX", round(LIVENESS_S * 1000)
                ),
                Command.of("SADD", registry_key(space, bucket), me),
            ]
        return commands

    def leaving(self) -> list[Command]:
        """The commands that say I am gone, having left what I owned."""
        me, space = self._worker.id, self._worker.space
        commands = []
        for bucket in range(space.buckets):
            commands += [
                Command.of("DEL", liveness_key(space, bucket, me)),
                Command.of("DEL", owned_key(space, bucket, me)),
                Command.of("SREM", registry_key(space, bucket), me),
            ]
        return commands

    def refreshing(self, touched: Collection[SessionKey]) -> list[Command]:
        """The commands, one per bucket, that keep me alive and registered and move the
        deadlines of `touched` (my sessions saved since the last refresh)."""
        me, space = self._worker.id, self._worker.space
        now = time.time()
        names = [member(key) for key in touched]
        groups = space.by_bucket(names)
        deadline, cutoff = now + self._held.idle_timeout_s, now - LIVENESS_S
        liveness_ms = round(LIVENESS_S * 1000)
        commands = []
        for bucket in range(space.buckets):
            keys = [
                *self._index.keys(bucket),
                liveness_key(space, bucket, me),
                registry_key(space, bucket),
                owned_key(space, bucket, me),
            ]
            mine = [names[i] for i in groups.get(bucket, [])]
            args = [me, space.prefix(bucket), deadline, liveness_ms, cutoff, *mine]
            commands.append(Command.call(_REFRESH, keys, args))
        return commands

    @staticmethod
    def outcome(replies: Sequence[Any]) -> tuple[list[bytes], set[bytes], list[bytes]]:
        """What the refreshes' replies say: the members I lost (another worker started
        them again), the workers that died and the members nobody owns (Redis lost my
        records of them with its data: mine to claim again)."""
        lost: list[bytes] = []
        dead: set[bytes] = set()
        orphans: list[bytes] = []
        for bucket_lost, bucket_dead, bucket_orphans in replies:
            lost += bucket_lost
            dead.update(bucket_dead)
            orphans += bucket_orphans
        return lost, dead, orphans
