"""This worker's ownership records in Redis: `owner:<session>` naming it, the set of the
sessions it owns in each bucket (`owned:<id>`), and their entries in the session index."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from rnnserve.service.sessions.owned.held import Held
from rnnserve.service.sessions.owned.liveness import LIVENESS_S
from rnnserve.service.sessions.owned.worker import Worker, owned_key
from rnnserve.service.sessions.redis.client import Command, Script
from rnnserve.service.sessions.redis.guard import guarded
from rnnserve.service.sessions.redis.index import INDEX, UNINDEX, SessionIndex, version_tag
from rnnserve.service.sessions.redis.keys import member, session_of
from rnnserve.service.sessions.state import SessionKey

log = logging.getLogger(__name__)

CHUNK = 1000  # sessions per script of a claim, and per batch of a clean stop's flush

# Every script touches the keys of one bucket (redis/keys.py): one hash slot in a
# cluster. ARGV[2] is always the bucket's key prefix; KEYS[1..3] the bucket's index
# (redis/index.py).

# KEYS: the index (3), the version tags, my owned list. ARGV: me, prefix, deadline,
# liveness ms, again ('1' or ''), then per session its member, version tag, version and
# whether to take it only if no live worker owns it ('1' or ''). Takes the sessions (new
# ones, or ids started again: a state left by an earlier run of the id goes; `again`: mine,
# whose records Redis lost, unless another worker has claimed one since or I released it
# since: no owner, and its state left for the next) and keeps me alive and registered in
# the bucket. Returns the members another live worker owns, of those to take only if none
# does (a start that found no sequence, which another worker began and stepped since: it
# is not begun again).
_CLAIM = Script(
    INDEX
    + """
redis.call('SET', ARGV[2] .. 'worker:' .. ARGV[1], '1', 'PX', ARGV[4])
redis.call('SADD', ARGV[2] .. 'workers', ARGV[1])
local held = {}
for i = 6, #ARGV, 4 do
  local owner_key, state_key = ARGV[2] .. 'owner:' .. ARGV[i], ARGV[2] .. 'state:' .. ARGV[i]
  local owner = ARGV[i + 3] == '1' and redis.call('GET', owner_key)
  -- claimed again with no owner and a state waiting: released since, for the next owner
  local released = ARGV[5] ~= '' and redis.call('EXISTS', owner_key) == 0
    and redis.call('EXISTS', state_key) == 1
  if owner and owner ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. 'worker:' .. owner) == 1 then
    table.insert(held, ARGV[i])
  elseif not released then
    if ARGV[5] == '' then
      redis.call('SET', owner_key, ARGV[1])
      redis.call('DEL', state_key)
    else
      redis.call('SET', owner_key, ARGV[1], 'NX')
    end
    redis.call('SADD', KEYS[5], ARGV[i])
    index(ARGV[i], ARGV[3], ARGV[i + 1], ARGV[i + 2])
  end
end
return held
"""
)
# KEYS: the index (3), my owned list. ARGV: me, prefix, a tombstone to leave ('' for none),
# its ttl in ms, members. Ends sessions I own.
_FORGET = Script(
    UNINDEX
    + """
for i = 5, #ARGV do
  if redis.call('GET', ARGV[2] .. 'owner:' .. ARGV[i]) == ARGV[1] then
    redis.call('DEL', ARGV[2] .. 'owner:' .. ARGV[i], ARGV[2] .. 'state:' .. ARGV[i])
    unindex(ARGV[i])
    redis.call('SREM', KEYS[4], ARGV[i])
    if ARGV[3] ~= '' then
      redis.call('SET', ARGV[2] .. 'ended:' .. ARGV[i], ARGV[3], 'PX', ARGV[4])
    end
  end
end
"""
)


class Ownership:
    """Claims sessions for this worker (new ones, and its own again after Redis lost its
    data) and ends those it owns."""

    def __init__(self, worker: Worker, held: Held) -> None:
        self.reachability = worker.reachability
        self._worker = worker
        self._held = held
        self._index = SessionIndex(worker.redis)

    @guarded("claim")
    async def claim(
        self, keys: list[SessionKey], again: bool = False, if_free: Collection[SessionKey] = ()
    ) -> set[SessionKey]:
        """Records me as the owner of `keys` (new sessions; `again`: mine, after Redis lost
        its data, unless another worker has claimed one since). Returns those of `if_free`
        (to take only if no live worker owns them) that another live worker owns."""
        if not keys:
            return set()
        me, space = self._worker.id, self._worker.space
        deadline = time.time() + self._held.idle_timeout_s
        names = [member(key) for key in keys]
        commands = []
        for bucket, group in space.by_bucket(names).items():
            for start in range(0, len(group), CHUNK):
                args: list[Any] = [
                    me, space.prefix(bucket), deadline, round(LIVENESS_S * 1000),
                    "1" if again else "",
                ]  # fmt: skip
                for i in group[start : start + CHUNK]:
                    model, version = keys[i].model, keys[i].version
                    args += [names[i], version_tag(model, version), json.dumps([model, version])]
                    args.append("1" if keys[i] in if_free else "")
                owned = owned_key(space, bucket, me)
                touched = [*self._index.keys(bucket), self._index.tags(bucket), owned]
                commands.append(Command.call(_CLAIM, touched, args))
        replies = await self._worker.redis.run(commands, durable=True)
        if again:
            log.warning("claimed the %d sequences this process holds again", len(keys))
        return {session_of(name) for held in replies for name in held}

    async def claim_again(self, keys: Iterable[SessionKey]) -> None:
        """Claims again those of `keys` this worker holds, after Redis lost their records
        (its data). Not those whose release may have reached Redis (Held.unsure): another
        worker may have taken and stepped them since; the next take decides. Nor, in the
        script, those released since (handed over while being claimed): their state waits
        in Redis for the worker that asked. Those that ended meanwhile lose the record the
        claim wrote: their end may have reached Redis first and found none to drop, and
        nobody would count them out again."""
        held = self._held
        mine = [key for key in keys if held.states.holds(key) and key not in held.unsure]
        await self.claim(mine, again=True)
        ended = [key for key in mine if not held.states.holds(key) or key in held.ending]
        if ended:
            await self._worker.redis.run(self.forgetting(ended))

    def forgetting(self, keys: Sequence[SessionKey], tombstone: bytes = b"") -> list[Command]:
        """The commands that end `keys`, those I own (leaving `tombstone`, if any)."""
        me, space = self._worker.id, self._worker.space
        names = [member(key) for key in keys]
        return [
            Command.call(
                _FORGET,
                [*self._index.keys(bucket), owned_key(space, bucket, me)],
                [
                    me,
                    space.prefix(bucket),
                    tombstone,
                    self._held.tombstone_ms,
                    *(names[i] for i in group),
                ],
            )
            for bucket, group in space.by_bucket(names).items()
        ]
