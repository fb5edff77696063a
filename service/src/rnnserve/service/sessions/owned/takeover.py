"""Bringing here the sessions that another worker owns or whose states wait in Redis: a
take, in Redis, of those nobody live holds; a hand-over request to the owner of the others
(its inbox), answered once it has handed them over (handover.py), and another take."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Sequence

from rnnserve.service.errors import FailedPrecondition, Unavailable
from rnnserve.service.sessions.owned.held import Held
from rnnserve.service.sessions.owned.liveness import LIVENESS_S, liveness_key
from rnnserve.service.sessions.owned.reaping import LOST
from rnnserve.service.sessions.owned.worker import Worker, inbox_key, owned_key, push
from rnnserve.service.sessions.redis.client import Command, Script
from rnnserve.service.sessions.redis.guard import guarded
from rnnserve.service.sessions.redis.index import UNINDEX, SessionIndex
from rnnserve.service.sessions.redis.keys import member
from rnnserve.service.sessions.redis.records import decode_record, encode_gone
from rnnserve.service.sessions.state import Gone, Progress, SessionKey
from rnnserve.service.types import State

log = logging.getLogger(__name__)

HANDOVER_TIMEOUT_S = 5.0  # how long a worker waits for an owner to hand a session over
ATTEMPTS = 3  # tries to take a session, with a hand-over request between two tries
KINDS = ("owner", "state", "ended")  # a session's keys, besides its index entries

# Every script touches the keys of one bucket (redis/keys.py): one hash slot in a
# cluster. ARGV[2] is the bucket's key prefix; KEYS[1..3] the bucket's index
# (redis/index.py).

# KEYS: the index (3), owner, state, ended, my owned list. ARGV: me, prefix, the session's
# index member, the tombstone of a lost session, its ttl in ms. Returns {'held', owner}
# while a live worker owns the session, {'taken', state} when the state waits in Redis (now
# owned by me), {'ended', record} when there is no such session but a record of its recent
# end (a tombstone, for one whose owner died), {} when there is neither. The state stays
# until my next refresh, so that a take repeated (its reply lost in a failover) gets it
# again; a copy whose owner died is stale (that owner stepped it further): the session is
# lost.
_TAKE = Script(
    UNINDEX
    + """
local owner = redis.call('GET', KEYS[4])
if owner and owner ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. 'worker:' .. owner) == 1 then
  return {'held', owner}
end
local state = redis.call('GET', KEYS[5])
if state and (not owner or owner == ARGV[1]) then
  redis.call('SET', KEYS[4], ARGV[1])
  redis.call('SADD', KEYS[7], ARGV[3])
  return {'taken', state}
end
if owner then  -- its owner dropped it (expired), or died: the session is gone
  redis.call('DEL', KEYS[4], KEYS[5])
  unindex(ARGV[3])
  redis.call('SREM', ARGV[2] .. 'owned:' .. owner, ARGV[3])
  if owner ~= ARGV[1] then
    redis.call('SET', KEYS[6], ARGV[4], 'PX', ARGV[5])
  end
end
local ended = redis.call('GET', KEYS[6])
if ended then return {'ended', ended} end
return {}
"""
)


class Takeover:
    """Takes sessions over from other workers, and from Redis."""

    def __init__(self, worker: Worker, held: Held, handover_timeout_s: float) -> None:
        self.reachability = worker.reachability
        self._handover_timeout_s = handover_timeout_s
        self._worker = worker
        self._held = held
        self._index = SessionIndex(worker.redis)

    async def acquire(
        self, keys: Sequence[SessionKey]
    ) -> dict[SessionKey, FailedPrecondition | bytes]:
        """Brings here those of `keys` that another worker owns or that wait in Redis.
        Returns, of the others, the errors of those whose stored state cannot serve and the
        records of those that ended lately (or were lost)."""
        found: dict[SessionKey, FailedPrecondition | bytes] = {}
        held = self._held
        missing = [key for key in keys if not held.states.holds(key) or key in held.unsure]
        for attempt in range(ATTEMPTS):
            owners = await self._take_here(missing, found) if missing else {}
            if not owners:
                return found
            if attempt + 1 < ATTEMPTS:
                await asyncio.gather(
                    *(self._ask(owner, theirs) for owner, theirs in owners.items())
                )
            missing = [key for theirs in owners.values() for key in theirs]
        raise Unavailable(
            f"{missing[0].describe()} is held by another server process that did not hand "
            f"it over (asked {ATTEMPTS - 1} times, {self._handover_timeout_s:g}s each); retry"
        )

    async def _take_here(
        self, keys: list[SessionKey], found: dict[SessionKey, FailedPrecondition | bytes]
    ) -> dict[str, list[SessionKey]]:
        """Takes the states of `keys` that wait in Redis; returns the rest that a live
        worker owns, by owner. A state that cannot serve, or the record of a session that
        ended (or was lost), goes into `found`."""
        owners: dict[str, list[SessionKey]] = {}
        for key, outcome in zip(keys, await self._take_all(keys), strict=True):
            mine = await self._unsure_copy(key)
            if not outcome:
                continue
            kind, value = outcome
            if kind == b"taken":
                try:
                    decoded = decode_record(key, value)
                    assert not isinstance(decoded, Gone)  # a live state, never a tombstone
                    state, progress = decoded
                    if mine is not None and mine[1].offset > progress.offset:
                        state, progress = mine  # my release was lost: Redis has an older copy
                    await self._held.states.save([key], state, [0], [progress])
                except FailedPrecondition as error:
                    found[key] = error
                else:
                    self._held.touched.add(key)  # the next refresh drops the copy in Redis
                    log.debug("took over %s (its state was handed over in Redis)", key.describe())
            elif kind == b"ended":
                found[key] = value
            else:
                owners.setdefault(value.decode(), []).append(key)
        return owners

    async def _unsure_copy(self, key: SessionKey) -> tuple[State, Progress] | None:
        """My copy of `key` when its release may have been lost, taken out of the sessions
        stepped here: the take decides. Redis's copy when it has the release (it may have
        been stepped further elsewhere since), mine when the release was lost in a failover
        (I still own the session there, with the older copy my own take left)."""
        if key not in self._held.unsure:
            return None
        self._held.unsure.discard(key)
        record = self._held.states.record_of(key)
        await self._held.states.delete([key])
        return record

    @guarded("take")
    async def _take_all(self, keys: Sequence[SessionKey]) -> list[list[bytes]]:
        me, space = self._worker.id, self._worker.space
        commands = []
        for key in keys:
            name = member(key)
            bucket = space.bucket(name)
            owner, state, ended = (space.key(kind, name) for kind in KINDS)
            owned = owned_key(space, bucket, me)
            touched = [*self._index.keys(bucket), owner, state, ended, owned]
            args = [me, space.prefix(bucket), name, encode_gone(LOST), self._held.tombstone_ms]
            commands.append(Command.call(_TAKE, touched, args))
        # On a replica before this worker steps from it: a take lost in a failover would
        # leave the state in Redis for another worker to take as well.
        return await self._worker.redis.run(commands, durable=True)

    @guarded("hand_over")
    async def _ask(self, owner: str, keys: list[SessionKey]) -> None:
        """Asks the owner to hand `keys` over and waits for its answer (or the timeout)."""
        log.debug("asking worker %s to hand over %d sessions", owner, len(keys))
        me = self._worker
        reply = f"{me.namespace}:reply:{uuid.uuid4().hex}"
        request = json.dumps([[member(key) for key in keys], reply])
        # A dead owner's inbox goes too.
        await me.redis.run(push(inbox_key(me.namespace, owner), request, LIVENESS_S))
        # Then, not with it: an owner declared dead since our take has had its inbox
        # emptied (reap) after its liveness records went, maybe before our request came:
        # waiting would be waiting for nobody. The next take says what became of the keys.
        bucket = me.space.bucket(member(keys[0]))
        if await me.redis.one(Command.of("EXISTS", liveness_key(me.space, bucket, owner))):
            await me.waiting.blpop(reply, self._handover_timeout_s)
