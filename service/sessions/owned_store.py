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
  memory store does (the redis store writes every step and loses none).
- The session index (sorted sets by deadline and by name, as in the redis store) counts
  the sessions for the limits; each owner refreshes its sessions' deadlines, and checks that
  it still owns them, once per sweep rather than once per step.
- Every key of a session, its index entries and the liveness record its owner is checked
  by lie in the session's bucket (redis_client.py: one hash slot in a cluster), so that
  each script touches one slot; a worker's liveness record is kept in every bucket.
- A session's progress (its step count, and its last step when kept for a retry) travels
  with its state. A session that ends with a step that carried `sequence_offset` leaves a
  record of it in Redis (`ended:<session>`, as the redis store does), written with the
  end's release of ownership: a retry of that step finds it from any worker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Sequence

from redis.exceptions import RedisError

from rnnserve.service import metrics
from rnnserve.service.errors import FailedPrecondition, Unavailable
from rnnserve.service.sessions.memory_store import MemoryStore
from rnnserve.service.sessions.redis_client import Command, RedisClient, Script
from rnnserve.service.sessions.redis_store import (
    SessionIndex,
    decode_record,
    encode_record,
    load_record,
    member,
    session_of,
    write_records,
)
from rnnserve.service.sessions.state import Loaded, Progress, SessionKey
from rnnserve.service.sessions.turns import Turns
from rnnserve.service.types import State

log = logging.getLogger(__name__)

LIVENESS_S = 10.0  # a worker silent this long is dead: its sessions are lost, not waited for
HANDOVER_TIMEOUT_S = 5.0  # how long a worker waits for an owner to hand a session over
ATTEMPTS = 3  # tries to take a session, with a hand-over request between two tries
INBOX_POLL_S = 0.5  # the inbox listener's longest wait in Redis (and at a stop)
FLUSH_CHUNK = 1000  # sessions per pipeline when a clean stop writes the states out
KINDS = ("owner", "state", "ended")  # a session's keys, besides its index entries

# Every script touches the keys of one bucket (redis_client.py): one hash slot in a
# cluster. ARGV[2] is always the bucket's key prefix.

# KEYS: owner, state, index, names, ended. ARGV: me, prefix, the session's index member.
# Returns {'held', owner} while a live worker owns the session, {'taken', state} when the
# state waits in Redis (now owned by me), {'ended', record} when there is no such session
# but a record of its recent end, {} when there is neither. The state stays until my next
# refresh, so that a take repeated (its reply lost in a failover) gets it again; a copy whose
# owner died is stale (that owner stepped it further) and is dropped with the session.
_TAKE = Script("""
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. 'worker:' .. owner) == 1 then
  return {'held', owner}
end
local state = redis.call('GET', KEYS[2])
if state and (not owner or owner == ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
  return {'taken', state}
end
if owner then  -- its owner died (or dropped it): the session is gone
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('ZREM', KEYS[3], ARGV[3])
  redis.call('ZREM', KEYS[4], ARGV[3])
end
local ended = redis.call('GET', KEYS[5])
if ended then return {'ended', ended} end
return {}
""")
# KEYS: owner, state. ARGV: me, state, ttl in ms. Leaves the state for the next owner.
_RELEASE = Script("""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[1])
return 1
""")
# KEYS: index, names. ARGV: me, prefix, deadline, members. Takes the sessions (new ones, or
# ids started again: a state left by an earlier run of the id goes).
_CLAIM = Script("""
for i = 4, #ARGV do
  redis.call('SET', ARGV[2] .. 'owner:' .. ARGV[i], ARGV[1])
  redis.call('DEL', ARGV[2] .. 'state:' .. ARGV[i])
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[i])
  redis.call('ZADD', KEYS[2], 0, ARGV[i])
end
""")
# KEYS: index, names. ARGV: me, prefix, members. Ends sessions I own.
_FORGET = Script("""
for i = 3, #ARGV do
  if redis.call('GET', ARGV[2] .. 'owner:' .. ARGV[i]) == ARGV[1] then
    redis.call('DEL', ARGV[2] .. 'owner:' .. ARGV[i], ARGV[2] .. 'state:' .. ARGV[i])
    redis.call('ZREM', KEYS[1], ARGV[i])
    redis.call('ZREM', KEYS[2], ARGV[i])
  end
end
""")
# KEYS: index, names, my liveness key. ARGV: me, prefix, deadline, liveness ms, cutoff,
# members. Keeps me alive, moves the deadlines of the members I own (and drops the copies of
# their states left by my takes), drops index entries past the cutoff (sessions of workers
# that died) and returns the members I lost.
_REFRESH = Script("""
redis.call('SET', KEYS[3], '1', 'PX', ARGV[4])
local lost = {}
for i = 6, #ARGV do
  if redis.call('GET', ARGV[2] .. 'owner:' .. ARGV[i]) == ARGV[1] then
    redis.call('ZADD', KEYS[1], ARGV[3], ARGV[i])
    redis.call('DEL', ARGV[2] .. 'state:' .. ARGV[i])
  else
    table.insert(lost, ARGV[i])
  end
end
for _, stale in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[5])) do
  redis.call('ZREM', KEYS[1], stale)
  redis.call('ZREM', KEYS[2], stale)
end
return lost
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
    ) -> None:
        self.handover_timeout_s = handover_timeout_s
        self.worker = uuid.uuid4().hex
        self._local = MemoryStore(idle_timeout_s)
        # Longer than any wait we ask of Redis (inbox polls, hand-over replies).
        socket_timeout = max(10.0, 2 * handover_timeout_s)
        self._redis = RedisClient(url, namespace, socket_timeout, durability, durability_timeout_s)
        self._space = self._redis.keys
        self._namespace = namespace
        self._index = SessionIndex(self._redis)
        self._touched: set[SessionKey] = set()  # saved since the last refresh
        # Released by a batch that failed (a failover): whether Redis has the release is
        # unknown, so the copy here is not stepped again before Redis is asked (_take_here).
        self._unsure: set[SessionKey] = set()
        self._turns = Turns()  # the session manager's, once started
        self._listener: asyncio.Task[None] | None = None
        self._closing = False
        self._handovers: set[asyncio.Task[None]] = set()

    @property
    def idle_timeout_s(self) -> float:
        return self._local.idle_timeout_s

    @idle_timeout_s.setter
    def idle_timeout_s(self, seconds: float) -> None:
        self._local.idle_timeout_s = seconds

    # What the session manager calls.

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

    async def delete(self, keys: Sequence[SessionKey]) -> list[bool]:
        deleted = await self._local.delete(keys)
        await self._redis.run(self._forgetting(keys), durable=True)
        self._touched.difference_update(keys)
        self._unsure.difference_update(keys)
        return deleted

    async def end(
        self,
        keys: Sequence[SessionKey],
        state: State,
        rows: Sequence[int],
        progress: Sequence[Progress],
    ) -> None:
        await self._local.delete(keys)
        if keys:
            keep_s = self.idle_timeout_s
            records = write_records(self._space, "ended", keys, state, rows, progress, keep_s)
            await self._redis.run([*records, *self._forgetting(keys)], durable=True)
        self._touched.difference_update(keys)

    async def count(self, principal: str | None = None) -> int:
        return await self._index.count(principal)

    async def expire(self) -> list[SessionKey]:
        """Drops my idle sessions, and keeps my ownership records alive (the sweeper calls
        this every second or more often)."""
        expired = await self._local.expire()
        self._touched.difference_update(expired)
        self._unsure.difference_update(expired)
        touched, self._touched = self._touched, set()
        now = time.time()
        names = [member(key) for key in touched]
        groups = self._space.by_bucket(names)
        refreshes = [
            self._refreshing(bucket, [names[i] for i in groups.get(bucket, [])], now)
            for bucket in range(self._space.buckets)
        ]
        forgetting = self._forgetting(expired)
        replies = await self._redis.run([*forgetting, *refreshes])
        lost = [name for names in replies[len(forgetting) :] for name in names]
        if lost:  # another worker started these ids over: my states are stale
            await self._local.delete([session_of(name) for name in lost])
        return expired

    async def start(self, turns: Turns) -> None:
        self._turns = turns
        await self._redis.check()
        await self._redis.run(self._liveness(alive=True))
        self._listener = asyncio.create_task(self._serve_inbox())

    async def close(self) -> None:
        """Stops handing over and writes every state to Redis for whoever comes next."""
        # The listener stops at its next poll, and hand-overs under way finish: redis-py
        # can swallow a cancellation that lands inside a command (redis/redis-py#2028).
        self._closing = True
        if self._listener is not None:  # started: hand everything over
            await self._listener
            await asyncio.gather(*self._handovers)
            try:
                await self._flush()
                await self._redis.run(self._liveness(alive=False))
            except RedisError:
                held = len(self._local.sessions())
                log.exception("writing %d session states to Redis failed", held)
        await self._redis.close()
        await self._local.close()

    # Taking sessions from other workers.

    async def _acquire(
        self, keys: Sequence[SessionKey]
    ) -> dict[SessionKey, FailedPrecondition | bytes]:
        """Brings here those of `keys` that another worker owns or that wait in Redis.
        Returns, of the others, the errors of those whose stored state cannot serve and the
        records of those that ended lately."""
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
        ended, goes into `found`."""
        held: dict[str, list[SessionKey]] = {}
        for key, outcome in zip(keys, await self._take_all(keys), strict=True):
            mine = await self._unsure_copy(key)
            if not outcome:
                continue
            kind, value = outcome
            if kind == b"taken":
                try:
                    state, progress = decode_record(key, value)
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

    async def _take_all(self, keys: Sequence[SessionKey]) -> list[list[bytes]]:
        commands = []
        for key in keys:
            name = member(key)
            bucket = self._space.bucket(name)
            owner, state, ended = (self._space.key(kind, name) for kind in KINDS)
            touched = [owner, state, *self._index.keys(bucket), ended]
            prefix = self._space.prefix(bucket)
            commands.append(Command.call(_TAKE, touched, [self.worker, prefix, name]))
        # On a replica before this worker steps from it: a take lost in a failover would
        # leave the state in Redis for another worker to take as well.
        return await self._redis.run(commands, durable=True)

    async def _ask(self, owner: str, keys: list[SessionKey]) -> None:
        """Asks the owner to hand `keys` over and waits for its answer (or the timeout)."""
        log.debug("asking worker %s to hand over %d sessions", owner, len(keys))
        reply = f"{self._namespace}:reply:{uuid.uuid4().hex}"
        inbox = self._inbox(owner)
        request = json.dumps([[member(key) for key in keys], reply])
        # A dead owner's inbox goes too.
        await self._redis.run(self._push(inbox, request, LIVENESS_S))
        await self._redis.blpop(reply, self.handover_timeout_s)

    # Handing my sessions to other workers.

    async def _serve_inbox(self) -> None:
        while not self._closing:
            try:
                request = await self._redis.blpop(self._inbox(self.worker), INBOX_POLL_S)
                if request is not None:
                    names, reply = json.loads(request[1])
                    task = asyncio.create_task(
                        self._hand_over([session_of(name) for name in names], reply)
                    )
                    self._handovers.add(task)
                    task.add_done_callback(self._handovers.discard)
            except Exception:  # an outage or a garbled request must not end the listener
                log.exception("serving a hand-over request failed")
                await asyncio.sleep(INBOX_POLL_S)

    async def _hand_over(self, keys: list[SessionKey], reply: str) -> None:
        try:
            for key in keys:
                await self._turns.take(key)  # waits for a step of the session in progress
                try:
                    await self._give_up([key])
                finally:
                    self._turns.give(key)
                log.debug("handed %s over to another worker", key.describe())
            await self._redis.run(self._push(reply, "1", 2 * self.handover_timeout_s))
        except (RedisError, Unavailable) as error:  # a failover: the asker's next take decides
            log.warning("handing %d session(s) over failed: %s", len(keys), error)

    async def _give_up(self, keys: Sequence[SessionKey]) -> None:
        """Leaves the keys' states in Redis for the next owner and drops them here."""
        commands = []
        for key in keys:
            record = self._local.record_of(key)
            if record is None:  # expired meanwhile: make that known instead
                commands += self._forgetting([key])
                continue
            name = member(key)
            commands.append(
                Command.call(
                    _RELEASE,
                    [self._space.key("owner", name), self._space.key("state", name)],
                    [self.worker, encode_record(key, *record), round(self.idle_timeout_s * 1000)],
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

    async def _claim(self, keys: list[SessionKey]) -> None:
        deadline = time.time() + self.idle_timeout_s
        names = [member(key) for key in keys]
        commands = [
            Command.call(
                _CLAIM,
                self._index.keys(bucket),
                [self.worker, self._space.prefix(bucket), deadline, *(names[i] for i in group)],
            )
            for bucket, group in self._space.by_bucket(names).items()
        ]
        await self._redis.run(commands, durable=True)

    def _refreshing(self, bucket: int, names: list[str], now: float) -> Command:
        """The command that keeps me alive in `bucket` and my sessions `names` there."""
        keys = [*self._index.keys(bucket), self._liveness_key(bucket, self.worker)]
        deadline, cutoff = now + self.idle_timeout_s, now - LIVENESS_S
        liveness_ms = round(LIVENESS_S * 1000)
        prefix = self._space.prefix(bucket)
        return Command.call(
            _REFRESH, keys, [self.worker, prefix, deadline, liveness_ms, cutoff, *names]
        )

    def _forgetting(self, keys: Sequence[SessionKey]) -> list[Command]:
        """The commands that end `keys`, those I own."""
        names = [member(key) for key in keys]
        return [
            Command.call(
                _FORGET,
                self._index.keys(bucket),
                [self.worker, self._space.prefix(bucket), *(names[i] for i in group)],
            )
            for bucket, group in self._space.by_bucket(names).items()
        ]

    def _liveness(self, alive: bool) -> list[Command]:
        """Set (or delete) the key that says I live, in every bucket: ownership scripts
        read the owner's liveness in the session's own bucket."""
        keys = [self._liveness_key(bucket, self.worker) for bucket in range(self._space.buckets)]
        if alive:
            return [Command.of("SET", key, 1, "PX", round(LIVENESS_S * 1000)) for key in keys]
        return [Command.of("DEL", key) for key in keys]

    def _liveness_key(self, bucket: int, worker: str) -> str:
        return f"{self._space.prefix(bucket)}worker:{worker}"

    def _inbox(self, worker: str) -> str:
        return f"{self._namespace}:inbox:{worker}"

    @staticmethod
    def _push(key: str, value: str, keep_s: float) -> list[Command]:
        """Appends `value` to the list `key`, which goes `keep_s` after the last push."""
        return [Command.of("RPUSH", key, value), Command.of("PEXPIRE", key, round(keep_s * 1000))]
