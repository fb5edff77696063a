"""States kept by the worker that steps them, handed over through Redis when a session's
request lands on another worker (`state_store = "owned"`).

Several workers share a port, and a connection stays with the worker that accepted it, so
a session's steps nearly always reach the worker that stepped it last. This store keeps
each session's state in that worker's memory (a MemoryStore: no Redis round trip on a
step) and records in Redis only who owns it:

- `owner:<session>` names the owning worker; `worker:<id>` exists while that worker lives
  (its sweeper refreshes it; it lapses LIVENESS_S after the worker stops doing so).
- A worker asked to step a session that another worker owns pushes a hand-over request
  onto the owner's inbox list. The owner takes the session's turn (so no step of it is
  running), writes the state to `state:<session>`, gives up ownership and answers; the
  asking worker takes the state and owns the session from then on. One worker at a time
  steps a session, always from its latest state.
- A clean stop writes every state to `state:<session>` and gives up ownership: a restarted
  server continues the sessions. A worker that crashes loses the states it held, as the
  memory store does (the redis store writes every step and loses none): each worker lists
  the sessions it owns (`owned:<id>`) and is registered in `workers`; once it is dead (its
  supervisor says so at once, `declare_dead`; any worker's sweep notices its liveness
  record lapsed) its sessions are reaped: unindexed, each leaving a tombstone in
  `ended:<session>` that makes its next step ABORTED ("state ... was lost"), and whoever
  waits for it to hand a session over is answered.
- Redis faults: a worker steps the sessions it holds without Redis, so they go on through
  an outage; what needs Redis (a new session, a hand-over, a count) fails UNAVAILABLE. When
  Redis (in a cluster: a bucket's master) comes back without its data (`Generation`), each
  worker claims its sessions there again.
- The session index (SessionIndex, as in the redis store) counts the sessions for the
  limits and for `rnnserve_sessions_active`; each owner refreshes its sessions' deadlines,
  and checks that it still owns them, once per sweep rather than once per step.
- Every key of a session, its index entries, and the liveness record, registry and owned
  list its owner is checked by lie in the session's bucket (redis_client.py: one hash slot
  in a cluster), so that each script touches one slot: a worker's liveness record, its
  registration and the list of what it owns are kept in every bucket. Inboxes and
  hand-over replies are single keys, anywhere.
- A session's progress (its step count, and its last step when kept for a retry) travels
  with its state. A session that ends leaves a record of its end in Redis
  (`ended:<session>`, as the redis store does), written with the end's release of
  ownership: a retry of a final step that carried `sequence_offset` finds it from any
  worker. An expiry leaves a tombstone there too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

from redis.exceptions import RedisError

from rnnserve.service import metrics
from rnnserve.service.errors import FailedPrecondition, Unavailable
from rnnserve.service.redis_url import where
from rnnserve.service.sessions.memory_store import MemoryStore
from rnnserve.service.sessions.reachability import Reachability, StoreUnavailable
from rnnserve.service.sessions.redis.census import RedisCensus
from rnnserve.service.sessions.redis.client import Command, RedisClient, Script
from rnnserve.service.sessions.redis.generation import Generation
from rnnserve.service.sessions.redis.guard import guarded
from rnnserve.service.sessions.redis.index import INDEX, UNINDEX, SessionIndex, version_tag
from rnnserve.service.sessions.redis.keys import member, session_of
from rnnserve.service.sessions.redis.records import (
    decode_record,
    encode_gone,
    encode_record,
    load_record,
    write_records,
)
from rnnserve.service.sessions.state import (
    Gone,
    Loaded,
    Progress,
    SessionKey,
    expired,
    tombstone_s,
)
from rnnserve.service.sessions.turns import Turns
from rnnserve.service.types import State

log = logging.getLogger(__name__)

LIVENESS_S = 10.0  # a worker silent this long is dead: its sessions are lost, not waited for
HANDOVER_TIMEOUT_S = 5.0  # how long a worker waits for an owner to hand a session over
ATTEMPTS = 3  # tries to take a session, with a hand-over request between two tries
INBOX_POLL_S = 0.5  # the inbox listener's longest wait in Redis (and at a stop)
FLUSH_CHUNK = 1000  # sessions per pipeline when a clean stop writes the states out
KINDS = ("owner", "state", "ended")  # a session's keys, besides its index entries
LOST = Gone("lost", "the server process holding it stopped unexpectedly")

# Every script touches the keys of one bucket (redis_client.py): one hash slot in a
# cluster. ARGV[2] is always the bucket's key prefix; KEYS[1..3] the bucket's index (UNINDEX).

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
# KEYS: owner, state, my owned list. ARGV: me, state, ttl in ms, member. Leaves the state
# for the next owner.
_RELEASE = Script("""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[3], ARGV[4])
return 1
""")
# KEYS: the index (3), the version tags, my owned list. ARGV: me, prefix, deadline,
# liveness ms, again ('1' or ''), then per session its member, version tag and version.
# Takes the sessions (new ones, or ids started again: a state left by an earlier run of
# the id goes; `again`: mine, after Redis lost its data, unless another worker has claimed
# one since) and keeps me alive and registered in the bucket.
_CLAIM = Script(
    INDEX
    + """
redis.call('SET', ARGV[2] .. 'worker:' .. ARGV[1], '1', 'PX', ARGV[4])
redis.call('SADD', ARGV[2] .. 'workers', ARGV[1])
for i = 6, #ARGV, 3 do
  if ARGV[5] == '' then
    redis.call('SET', ARGV[2] .. 'owner:' .. ARGV[i], ARGV[1])
    redis.call('DEL', ARGV[2] .. 'state:' .. ARGV[i])
  else
    redis.call('SET', ARGV[2] .. 'owner:' .. ARGV[i], ARGV[1], 'NX')
  end
  redis.call('SADD', KEYS[5], ARGV[i])
  index(ARGV[i], ARGV[3], ARGV[i + 1], ARGV[i + 2])
end
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
# KEYS: the index (3), my liveness key, the worker registry, my owned list. ARGV: me,
# prefix, deadline, liveness ms, cutoff, members. Keeps me alive and registered, moves the
# deadlines of the members I own (and drops the copies of their states left by my takes),
# drops index entries past the cutoff (states left in Redis that nobody took) and returns
# the members I lost and the workers that died.
_REFRESH = Script(
    UNINDEX
    + """
redis.call('SET', KEYS[4], '1', 'PX', ARGV[4])
redis.call('SADD', KEYS[5], ARGV[1])
local lost = {}
for i = 6, #ARGV do
  if redis.call('GET', ARGV[2] .. 'owner:' .. ARGV[i]) == ARGV[1] then
    redis.call('ZADD', KEYS[1], ARGV[3], ARGV[i])
    redis.call('DEL', ARGV[2] .. 'state:' .. ARGV[i])
  else
    table.insert(lost, ARGV[i])
    redis.call('SREM', KEYS[6], ARGV[i])
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
return {lost, dead}
"""
)
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


class OwnedStore:
    def __init__(
        self,
        url: str,
        idle_timeout_s: float = 60.0,
        namespace: str = "rnnserve",
        handover_timeout_s: float = HANDOVER_TIMEOUT_S,
        durability: str = "none",
        durability_timeout_s: float = 1.0,
        *,
        timeout_s: float = 1.0,
        worker: str | None = None,
    ) -> None:
        """`timeout_s`, `durability`, `durability_timeout_s`: as the redis store's.
        `worker`: this process's id in Redis (the supervisor names its workers' ids, to
        declare them dead); a fresh one by default."""
        self.handover_timeout_s = handover_timeout_s
        self.worker = worker or uuid.uuid4().hex
        self.reachability = Reachability("owned", where(url))
        self._url, self._namespace, self._timeout_s = url, namespace, timeout_s
        self._local = MemoryStore(idle_timeout_s)
        self._redis = RedisClient(url, namespace, timeout_s, durability, durability_timeout_s)
        # Blocking waits (inbox polls, hand-over replies) on a client of their own, whose
        # timeout outlasts them; every other call fails fast.
        self._waiting = RedisClient(url, namespace, max(10.0, 2 * handover_timeout_s))
        self._space = self._redis.keys
        self._index = SessionIndex(self._redis)
        self._generation = Generation(
            self._redis, where(url), "this process claims the sequences it holds again"
        )
        self._touched: set[SessionKey] = set()  # saved since the last refresh
        # Released by a batch that failed (a failover): whether Redis has the release is
        # unknown, so the copy here is not stepped again before Redis is asked (_take_here).
        self._unsure: set[SessionKey] = set()
        self._turns = Turns()  # the session manager's, once started
        self._listener: asyncio.Task[None] | None = None
        self._closing = False
        self._handovers: set[asyncio.Task[None]] = set()
        self._census: RedisCensus | None = None

    @property
    def idle_timeout_s(self) -> float:
        return self._local.idle_timeout_s

    @idle_timeout_s.setter
    def idle_timeout_s(self, seconds: float) -> None:
        self._local.idle_timeout_s = seconds

    @property
    def _tombstone_ms(self) -> int:
        return round(tombstone_s(self.idle_timeout_s) * 1000)

    # What the session manager calls.

    # load, save and contains reach Redis only for sessions this process does not hold (and
    # new ones): what reaches it is guarded below, so that a step of a session held here,
    # served without Redis, does not count as Redis answering.

    async def load(
        self, keys: Sequence[SessionKey], into: State, rows: Sequence[int]
    ) -> list[Loaded]:
        elsewhere = await self._acquire(keys)
        loaded = await self._local.load(keys, into, rows)
        for index, (key, row) in enumerate(zip(keys, rows, strict=True)):
            found = elsewhere.get(key)
            if isinstance(found, bytes):  # the record of its recent end
                loaded[index] = load_record(key, found, into, row, ended=True)
            elif found is not None:
                loaded[index] = found
        if any(one is None for one in loaded):
            await self._check_generation()
            keep_s = self._tombstone_ms / 1000
            loaded = [
                self._generation.lost(member(key), keep_s) if one is None else one
                for key, one in zip(keys, loaded, strict=True)
            ]
        return loaded

    async def save(
        self,
        keys: Sequence[SessionKey],
        state: State,
        rows: Sequence[int],
        progress: Sequence[Progress],
    ) -> None:
        new = [key for key in keys if not self._local.holds(key)]
        if new:
            await self._claim(new)
        await self._local.save(keys, state, rows, progress)
        self._touched.update(keys)

    async def contains(self, keys: Sequence[SessionKey]) -> list[bool]:
        elsewhere = await self._acquire(keys)
        found = await self._local.contains(keys)
        return [
            one or isinstance(elsewhere.get(key), FailedPrecondition)
            for key, one in zip(keys, found, strict=True)
        ]

    @guarded("delete")
    async def delete(self, keys: Sequence[SessionKey]) -> list[bool]:
        # Redis first: should it fail, the sessions are as they were.
        await self._redis.run(self._forgetting(keys), durable=True)
        deleted = await self._local.delete(keys)
        self._touched.difference_update(keys)
        self._unsure.difference_update(keys)
        return deleted

    @guarded("end")
    async def end(
        self,
        keys: Sequence[SessionKey],
        state: State,
        rows: Sequence[int],
        progress: Sequence[Progress],
    ) -> None:
        if keys:  # Redis first: should it fail, a retry of the final step finds the state
            space, keep_s = self._space, self.idle_timeout_s
            records = write_records(space, "ended", keys, state, rows, progress, keep_s, ended=True)
            await self._redis.run([*records, *self._forgetting(keys)], durable=True)
        await self._local.delete(keys)
        self._touched.difference_update(keys)
        self._unsure.difference_update(keys)

    @guarded("count")
    async def count(self, principal: str | None = None) -> int:
        return await self._index.count(principal)

    def active(self) -> dict[tuple[str, str], int]:
        """Sessions by model version, counted in Redis: every worker's, and the states
        waiting there for an owner (from the scrape's thread)."""
        if self._census is None:
            self._census = RedisCensus(self._url, self._namespace, self._timeout_s)
        return self._census()

    @guarded("expire")
    async def expire(self) -> list[SessionKey]:
        """Drops my idle sessions, keeps my ownership records alive and reaps the workers
        that died (the sweeper calls this every second or more often)."""
        await self._check_generation()
        expired_keys = await self._local.expire()
        self._touched.difference_update(expired_keys)
        self._unsure.difference_update(expired_keys)
        touched, self._touched = self._touched, set()
        now = time.time()
        names = [member(key) for key in touched]
        groups = self._space.by_bucket(names)
        refreshes = [
            self._refreshing(bucket, [names[i] for i in groups.get(bucket, [])], now)
            for bucket in range(self._space.buckets)
        ]
        tombstone = encode_gone(expired(self.idle_timeout_s))
        forgetting = self._forgetting(expired_keys, tombstone)
        replies = await self._redis.run([*forgetting, *refreshes])
        lost: list[bytes] = []
        dead: set[bytes] = set()
        for bucket_lost, bucket_dead in replies[len(forgetting) :]:
            lost += bucket_lost
            dead.update(bucket_dead)
        if lost:  # another worker started these ids over: my states are stale
            await self._local.delete([session_of(name) for name in lost])
        for worker in dead:
            await self.reap(worker.decode())
        return expired_keys

    async def reap(self, worker: str) -> int:
        """Reaps a dead worker (see reap); how many sessions were lost with it."""
        lost = await reap(self._redis, self._namespace, worker, self._tombstone_ms)
        if lost > 0:
            log.warning("a dead server process held %d sequences: they are lost", lost)
        return lost

    async def start(self, turns: Turns) -> None:
        self._turns = turns
        await self._redis.check()  # a URL that names the wrong kind of Redis stops the start
        # Unreachable: said by the reachability; the sweep announces this worker once it can.
        with contextlib.suppress(StoreUnavailable):
            await self._announce()
        self._listener = asyncio.create_task(self._serve_inbox())

    @guarded("start")
    async def _announce(self) -> None:
        """This worker is alive and registered (in every bucket), and the data's generation
        noted."""
        await self._redis.run(self._liveness(alive=True))
        await self._check_generation()

    @guarded("generation")
    async def _check_generation(self) -> None:
        """Whichever call notices first that Redis lost its data claims the sessions this
        process holds there again (their states are intact here): a later sweep would
        otherwise find their ownership records gone and drop them. A claim that fails is
        tried again by the next check."""
        seen = list(self._generation.tokens)
        lost = set(await self._generation.check())
        if not lost:
            return
        held = [key for key in self._local.sessions() if self._space.bucket(member(key)) in lost]
        try:
            await self._claim(held, again=True)
        except BaseException:
            self._generation.tokens = seen
            raise
        # Those that ended while being claimed: their end found no record to drop.
        ended = [key for key in held if not self._local.holds(key)]
        if ended:
            await self._redis.run(self._forgetting(ended))

    async def close(self) -> None:
        """Stops handing over and writes every state to Redis for whoever comes next."""
        # The listener stops at its next poll, and hand-overs under way finish: redis-py
        # can swallow a cancellation that lands inside a command (redis/redis-py#2028).
        self._closing = True
        if self._listener is not None:  # started: hand everything over
            await self._listener
            await asyncio.gather(*self._handovers)
            held = len(self._local.sessions())
            try:
                await self._leave()
            except StoreUnavailable:
                log.warning("Redis is unreachable: the states of %d sequences are lost", held)
            except (RedisError, Unavailable) as error:
                log.warning("writing %d session states to Redis failed: %s", held, error)
        await self._redis.close()
        await self._waiting.close()
        if self._census is not None:
            self._census.close()
        await self._local.close()

    @guarded("close")
    async def _leave(self) -> None:
        await self._flush()
        await self._redis.run(self._liveness(alive=False))

    # Taking sessions from other workers.

    async def _acquire(
        self, keys: Sequence[SessionKey]
    ) -> dict[SessionKey, FailedPrecondition | bytes]:
        """Brings here those of `keys` that another worker owns or that wait in Redis.
        Returns, of the others, the errors of those whose stored state cannot serve and the
        records of those that ended lately (or were lost)."""
        found: dict[SessionKey, FailedPrecondition | bytes] = {}
        missing = [key for key in keys if not self._local.holds(key) or key in self._unsure]
        for attempt in range(ATTEMPTS):
            held = await self._take_here(missing, found) if missing else {}
            if not held:
                return found
            if attempt + 1 < ATTEMPTS:
                await asyncio.gather(*(self._ask(owner, owned) for owner, owned in held.items()))
            missing = [key for owned in held.values() for key in owned]
        raise Unavailable(
            f"{missing[0].describe()} is held by another server process that did not hand "
            f"it over (asked {ATTEMPTS - 1} times, {self.handover_timeout_s:g}s each); retry"
        )

    async def _take_here(
        self, keys: list[SessionKey], found: dict[SessionKey, FailedPrecondition | bytes]
    ) -> dict[str, list[SessionKey]]:
        """Takes the states of `keys` that wait in Redis; returns the rest that a live
        worker owns, by owner. A state that cannot serve, or the record of a session that
        ended (or was lost), goes into `found`."""
        held: dict[str, list[SessionKey]] = {}
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
                    await self._local.save([key], state, [0], [progress])
                except FailedPrecondition as error:
                    found[key] = error
                else:
                    self._touched.add(key)  # the next refresh drops the copy in Redis
                    log.debug("took over %s (its state was handed over in Redis)", key.describe())
            elif kind == b"ended":
                found[key] = value
            else:
                held.setdefault(value.decode(), []).append(key)
        return held

    async def _unsure_copy(self, key: SessionKey) -> tuple[State, Progress] | None:
        """My copy of `key` when its release may have been lost, taken out of the sessions
        stepped here: the take decides. Redis's copy when it has the release (it may have
        been stepped further elsewhere since), mine when the release was lost in a failover
        (I still own the session there, with the older copy my own take left)."""
        if key not in self._unsure:
            return None
        self._unsure.discard(key)
        record = self._local.record_of(key)
        await self._local.delete([key])
        return record

    @guarded("take")
    async def _take_all(self, keys: Sequence[SessionKey]) -> list[list[bytes]]:
        commands = []
        for key in keys:
            name = member(key)
            bucket = self._space.bucket(name)
            owner, state, ended = (self._space.key(kind, name) for kind in KINDS)
            touched = [*self._index.keys(bucket), owner, state, ended, self._owned(bucket)]
            prefix = self._space.prefix(bucket)
            args = [self.worker, prefix, name, encode_gone(LOST), self._tombstone_ms]
            commands.append(Command.call(_TAKE, touched, args))
        # On a replica before this worker steps from it: a take lost in a failover would
        # leave the state in Redis for another worker to take as well.
        return await self._redis.run(commands, durable=True)

    @guarded("hand_over")
    async def _ask(self, owner: str, keys: list[SessionKey]) -> None:
        """Asks the owner to hand `keys` over and waits for its answer (or the timeout)."""
        log.debug("asking worker %s to hand over %d sessions", owner, len(keys))
        reply = f"{self._namespace}:reply:{uuid.uuid4().hex}"
        request = json.dumps([[member(key) for key in keys], reply])
        # A dead owner's inbox goes too.
        await self._redis.run(_push(inbox_of(self._namespace, owner), request, LIVENESS_S))
        # Then, not with it: an owner declared dead since our take has had its inbox
        # emptied (reap) after its liveness records went, maybe before our request came:
        # waiting would be waiting for nobody. The next take says what became of the keys.
        bucket = self._space.bucket(member(keys[0]))
        if await self._redis.one(Command.of("EXISTS", liveness_key(self._redis, bucket, owner))):
            await self._waiting.blpop(reply, self.handover_timeout_s)

    # Handing my sessions to other workers.

    async def _serve_inbox(self) -> None:
        while not self._closing:
            try:
                request = await self._poll_inbox()
                if request is not None:
                    names, reply = json.loads(request[1])
                    task = asyncio.create_task(
                        self._hand_over([session_of(name) for name in names], reply)
                    )
                    self._handovers.add(task)
                    task.add_done_callback(self._handovers.discard)
            except StoreUnavailable:  # said by the reachability: wait, and poll again
                await asyncio.sleep(INBOX_POLL_S)
            except Exception:  # a garbled request must not end the listener
                log.exception("serving a hand-over request failed")
                await asyncio.sleep(INBOX_POLL_S)

    @guarded("hand_over")
    async def _poll_inbox(self) -> Any:
        return await self._waiting.blpop(inbox_of(self._namespace, self.worker), INBOX_POLL_S)

    async def _hand_over(self, keys: list[SessionKey], reply: str) -> None:
        try:
            await self._hand_over_all(keys, reply)
        except StoreUnavailable:  # said by the reachability; the asker times out and says so
            pass
        except (RedisError, Unavailable) as error:  # the asker's next take decides
            log.warning("handing %d session(s) over failed: %s", len(keys), error)

    @guarded("hand_over")
    async def _hand_over_all(self, keys: list[SessionKey], reply: str) -> None:
        for key in keys:
            await self._turns.take(key)  # waits for a step of the session in progress
            try:
                await self._give_up([key])
            finally:
                self._turns.give(key)
            log.debug("handed %s over to another worker", key.describe())
        await self._redis.run(_push(reply, "1", 2 * self.handover_timeout_s))

    async def _give_up(self, keys: Sequence[SessionKey]) -> None:
        """Leaves the keys' states in Redis for the next owner and drops them here."""
        commands = []
        for key in keys:
            record = self._local.record_of(key)
            if record is None:  # expired meanwhile: make that known instead
                commands += self._forgetting([key], encode_gone(expired(self.idle_timeout_s)))
                continue
            name = member(key)
            bucket = self._space.bucket(name)
            commands.append(
                Command.call(
                    _RELEASE,
                    [
                        self._space.key("owner", name),
                        self._space.key("state", name),
                        self._owned(bucket),
                    ],
                    [
                        self.worker,
                        encode_record(key, *record),
                        round(self.idle_timeout_s * 1000),
                        name,
                    ],
                )
            )
        try:
            await self._redis.run(commands, durable=True)
        except BaseException:
            self._unsure.update(keys)
            raise
        await self._local.delete(keys)
        self._unsure.difference_update(keys)
        self._touched.difference_update(keys)
        for key in keys:
            metrics.SESSIONS_HANDED_OVER.labels(key.model, key.version).inc()

    async def _flush(self) -> None:
        sessions = self._local.sessions()
        log.debug("leaving %d session states in Redis for the next owner", len(sessions))
        for start in range(0, len(sessions), FLUSH_CHUNK):
            await self._give_up(sessions[start : start + FLUSH_CHUNK])

    # Ownership records.

    @guarded("claim")
    async def _claim(self, keys: list[SessionKey], again: bool = False) -> None:
        """Records me as the owner of `keys` (new sessions; `again`: mine, after Redis lost
        its data, unless another worker has claimed one since)."""
        if not keys:
            return
        deadline = time.time() + self.idle_timeout_s
        names = [member(key) for key in keys]
        commands = []
        for bucket, group in self._space.by_bucket(names).items():
            for start in range(0, len(group), FLUSH_CHUNK):
                args: list[Any] = [
                    self.worker, self._space.prefix(bucket), deadline,
                    round(LIVENESS_S * 1000), "1" if again else "",
                ]  # fmt: skip
                for i in group[start : start + FLUSH_CHUNK]:
                    model, version = keys[i].model, keys[i].version
                    args += [names[i], version_tag(model, version), json.dumps([model, version])]
                touched = [*self._index.keys(bucket), self._index.tags(bucket), self._owned(bucket)]
                commands.append(Command.call(_CLAIM, touched, args))
        await self._redis.run(commands, durable=True)
        if again:
            log.warning("claimed the %d sequences this process holds again", len(keys))

    def _refreshing(self, bucket: int, names: list[str], now: float) -> Command:
        """The command that keeps me alive in `bucket` and my sessions `names` there."""
        keys = [
            *self._index.keys(bucket),
            liveness_key(self._redis, bucket, self.worker),
            self._space.prefix(bucket) + "workers",
            self._owned(bucket),
        ]
        deadline, cutoff = now + self.idle_timeout_s, now - LIVENESS_S
        liveness_ms = round(LIVENESS_S * 1000)
        prefix = self._space.prefix(bucket)
        return Command.call(
            _REFRESH, keys, [self.worker, prefix, deadline, liveness_ms, cutoff, *names]
        )

    def _forgetting(self, keys: Sequence[SessionKey], tombstone: bytes = b"") -> list[Command]:
        """The commands that end `keys`, those I own (leaving `tombstone`, if any)."""
        names = [member(key) for key in keys]
        return [
            Command.call(
                _FORGET,
                [*self._index.keys(bucket), self._owned(bucket)],
                [
                    self.worker,
                    self._space.prefix(bucket),
                    tombstone,
                    self._tombstone_ms,
                    *(names[i] for i in group),
                ],
            )
            for bucket, group in self._space.by_bucket(names).items()
        ]

    def _liveness(self, alive: bool) -> list[Command]:
        """Set (or delete) the keys that say I live and am registered, in every bucket:
        ownership scripts read the owner's liveness in the session's own bucket."""
        commands = []
        for bucket in range(self._space.buckets):
            key = liveness_key(self._redis, bucket, self.worker)
            workers = self._space.prefix(bucket) + "workers"
            if alive:
                commands += [
                    Command.of("SET", key, 1, "PX", round(LIVENESS_S * 1000)),
                    Command.of("SADD", workers, self.worker),
                ]
            else:
                commands += [
                    Command.of("DEL", key),
                    Command.of("DEL", self._owned(bucket)),
                    Command.of("SREM", workers, self.worker),
                ]
        return commands

    def _owned(self, bucket: int) -> str:
        """The set of my sessions in `bucket`."""
        return f"{self._space.prefix(bucket)}owned:{self.worker}"


def liveness_key(redis: RedisClient, bucket: int, worker: str) -> str:
    return f"{redis.keys.prefix(bucket)}worker:{worker}"


def inbox_of(namespace: str, worker: str) -> str:
    return f"{namespace}:inbox:{worker}"


def _push(key: str, value: str, keep_s: float) -> list[Command]:
    """Appends `value` to the list `key`, which goes `keep_s` after the last push."""
    return [Command.of("RPUSH", key, value), Command.of("PEXPIRE", key, round(keep_s * 1000))]


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
                space.prefix(bucket) + "workers",
                f"{space.prefix(bucket)}owned:{worker}",
            ],
            [worker, space.prefix(bucket), encode_gone(LOST), tombstone_ms],
            retry_safe=False,  # it reports what it reaps, once
        )
        for bucket in range(space.buckets)
    ]
    counts = await redis.run(commands, durable=True)
    waiting = await redis.one(Command.call(_EMPTY, [inbox_of(namespace, worker)]))
    answers = [
        command for request in waiting for command in _push(json.loads(request)[1], "1", 60.0)
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
            buckets = range(redis.keys.buckets)
            await redis.run([Command.of("DEL", liveness_key(redis, b, worker)) for b in buckets])
            return await reap(redis, namespace, worker, round(tombstone_s(idle_timeout_s) * 1000))
        finally:
            await redis.close()

    return asyncio.run(declare())
