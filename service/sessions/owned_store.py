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
  Redis comes back without its data (`Generation`), each worker claims its sessions again.
- The session index (SessionIndex, as in the redis store) counts the sessions for the
  limits and for `rnnserve_sessions_active`; each owner refreshes its sessions' deadlines,
  and checks that it still owns them, once per sweep rather than once per step.
- A session's progress (its step count, and its last step when kept for a retry) travels
  with its state. A session that ends with a step that carried `sequence_offset` leaves a
  record of it in Redis (`ended:<session>`, as the redis store does), written with the
  end's release of ownership: a retry of that step finds it from any worker. An expiry
  leaves a tombstone there too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Sequence

import redis

from rnnserve.service import metrics
from rnnserve.service.errors import FailedPrecondition, Unavailable
from rnnserve.service.sessions.memory_store import MemoryStore
from rnnserve.service.sessions.reachability import Reachability, StoreUnavailable
from rnnserve.service.sessions.redis_store import (
    UNINDEX,
    Generation,
    RedisCensus,
    SessionIndex,
    connect,
    decode_record,
    encode_gone,
    encode_record,
    guarded,
    load_record,
    member,
    session_of,
    where,
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
LOST = Gone("lost", "the server process holding it stopped unexpectedly")

# KEYS: the index (3), owner, state, ended, my owned set. ARGV: me, the worker-key prefix,
# the session's index member, the tombstone of a lost session, its ttl in ms, the
# owned-set prefix. Returns {'held', owner} while a live worker owns the session, {'taken',
# state} when the state was in Redis (now owned by me), {'ended', record} when there is no
# such session but a record of its recent end (a tombstone, for one whose owner died), {}
# when there is neither.
_TAKE = (
    UNINDEX
    + """
local owner = redis.call('GET', KEYS[4])
if owner and owner ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. owner) == 1 then
  return {'held', owner}
end
local state = redis.call('GET', KEYS[5])
if not state then
  if owner then  -- its owner dropped it (expired), or died: the session is gone
    redis.call('DEL', KEYS[4])
    unindex(ARGV[3])
    redis.call('SREM', ARGV[6] .. owner, ARGV[3])
    if owner ~= ARGV[1] then
      redis.call('SET', KEYS[6], ARGV[4], 'PX', ARGV[5])
    end
  end
  local ended = redis.call('GET', KEYS[6])
  if ended then return {'ended', ended} end
  return {}
end
redis.call('DEL', KEYS[5])
redis.call('SET', KEYS[4], ARGV[1])
redis.call('SADD', KEYS[7], ARGV[3])
return {'taken', state}
"""
)
# KEYS: owner, state, my owned set. ARGV: me, state, ttl in ms, member. Leaves the state
# for the next owner.
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[3], ARGV[4])
return 1
"""
# KEYS: the index (3), my owned set. ARGV: me, the owner-key prefix, the ended-key prefix,
# a tombstone to leave ('' for none), its ttl in ms, members. Ends sessions I own.
_FORGET = (
    UNINDEX
    + """
for i = 6, #ARGV do
  if redis.call('GET', ARGV[2] .. ARGV[i]) == ARGV[1] then
    redis.call('DEL', ARGV[2] .. ARGV[i])
    unindex(ARGV[i])
    redis.call('SREM', KEYS[4], ARGV[i])
    if ARGV[4] ~= '' then
      redis.call('SET', ARGV[3] .. ARGV[i], ARGV[4], 'PX', ARGV[5])
    end
  end
end
"""
)
# KEYS: the index (3), my liveness key, the worker registry, my owned set. ARGV: me, the
# owner-key prefix, deadline, liveness ms, cutoff, the worker-key prefix, members. Keeps me
# alive, moves the deadlines of the members I own, drops index entries past the cutoff
# (states left in Redis that nobody took) and returns the members I lost and the workers
# that died.
_REFRESH = (
    UNINDEX
    + """
redis.call('SET', KEYS[4], '1', 'PX', ARGV[4])
redis.call('SADD', KEYS[5], ARGV[1])
local lost = {}
for i = 7, #ARGV do
  if redis.call('GET', ARGV[2] .. ARGV[i]) == ARGV[1] then
    redis.call('ZADD', KEYS[1], ARGV[3], ARGV[i])
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
  if redis.call('EXISTS', ARGV[6] .. worker) == 0 then table.insert(dead, worker) end
end
return {lost, dead}
"""
)
# KEYS: the index (3), the worker registry, the dead worker's owned set, its inbox. ARGV:
# the dead worker, the worker-key prefix, the owner-key prefix, the ended-key prefix, the
# tombstone of a lost session, its ttl in ms. Reaps a dead worker: its sessions are lost
# (unindexed, tombstones left), and whoever waits for it to hand one over is answered.
# Returns how many it held, or -1 when it is alive after all.
_REAP = (
    UNINDEX
    + """
if redis.call('EXISTS', ARGV[2] .. ARGV[1]) == 1 then return -1 end
local lost = 0
for _, name in ipairs(redis.call('SMEMBERS', KEYS[5])) do
  if redis.call('GET', ARGV[3] .. name) == ARGV[1] then
    redis.call('DEL', ARGV[3] .. name)
    unindex(name)
    redis.call('SET', ARGV[4] .. name, ARGV[5], 'PX', ARGV[6])
    lost = lost + 1
  end
end
redis.call('DEL', KEYS[5])
redis.call('SREM', KEYS[4], ARGV[1])
for _, request in ipairs(redis.call('LRANGE', KEYS[6], 0, -1)) do
  local reply = cjson.decode(request)[2]
  redis.call('RPUSH', reply, 1)
  redis.call('PEXPIRE', reply, 60000)
end
redis.call('DEL', KEYS[6])
return lost
"""
)


class _Keys:
    """The Redis keys of one namespace."""

    def __init__(self, namespace: str) -> None:
        self.prefix = f"{namespace}:"
        self.owner = self.prefix + "owner:"
        self.state = self.prefix + "state:"
        self.ended = self.prefix + "ended:"
        self.liveness = self.prefix + "worker:"
        self.owned = self.prefix + "owned:"
        self.workers = self.prefix + "workers"

    def inbox(self, worker: str) -> str:
        return f"{self.prefix}inbox:{worker}"


class OwnedStore:
    def __init__(
        self,
        url: str,
        idle_timeout_s: float = 60.0,
        namespace: str = "rnnserve",
        handover_timeout_s: float = HANDOVER_TIMEOUT_S,
        timeout_s: float = 1.0,
        worker: str | None = None,
    ) -> None:
        """`worker`: this process's id in Redis (the supervisor names its workers' ids, to
        declare them dead); a fresh one by default."""
        self.handover_timeout_s = handover_timeout_s
        self.worker = worker or uuid.uuid4().hex
        self.reachability = Reachability("owned", where(url))
        self._url, self._namespace, self._timeout_s = url, namespace, timeout_s
        self._local = MemoryStore(idle_timeout_s)
        self._client = connect(url, timeout_s)
        # Blocking waits (inbox polls, hand-over replies) on a client of their own, whose
        # timeout outlasts them; every other call fails fast.
        self._waiting = connect(url, max(10.0, 2 * handover_timeout_s))
        self._keys = _Keys(namespace)
        self._index = SessionIndex(self._client, namespace)
        self._generation = Generation(
            self._client, namespace, where(url), "this process claims the sequences it holds again"
        )
        self._take = self._client.register_script(_TAKE)
        self._release = self._client.register_script(_RELEASE)
        self._forget = self._client.register_script(_FORGET)
        self._refresh = self._client.register_script(_REFRESH)
        self._reap = self._client.register_script(_REAP)
        self._touched: set[SessionKey] = set()  # saved since the last refresh
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
            lost = self._generation.lost(self._tombstone_ms / 1000)
            loaded = [lost if one is None else one for one in loaded]
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
        if keys:  # Redis first: should it fail, the sessions are as they were
            await self._forget_all(keys)
        deleted = await self._local.delete(keys)
        self._touched.difference_update(keys)
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
            async with self._client.pipeline(transaction=False) as pipe:
                prefix, keep_s = self._keys.ended, self.idle_timeout_s
                write_records(pipe, prefix, keys, state, rows, progress, keep_s, ended=True)
                await self._forget_all(keys, client=pipe)
                await pipe.execute()
        await self._local.delete(keys)
        self._touched.difference_update(keys)

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
        touched, self._touched = self._touched, set()
        now = time.time()
        async with self._client.pipeline(transaction=False) as pipe:
            if expired_keys:
                tombstone = encode_gone(expired(self.idle_timeout_s))
                await self._forget_all(expired_keys, tombstone, client=pipe)
            await self._refresh(
                keys=[
                    *self._index.keys, self._keys.liveness + self.worker, self._keys.workers,
                    self._keys.owned + self.worker,
                ],
                args=[
                    self.worker, self._keys.owner, now + self.idle_timeout_s,
                    round(LIVENESS_S * 1000), now - LIVENESS_S, self._keys.liveness,
                    *(member(key) for key in touched),
                ],
                client=pipe,
            )  # fmt: skip
            *_, (lost, dead) = await pipe.execute()
        if lost:  # another worker started these ids over: my states are stale
            await self._local.delete([session_of(name) for name in lost])
        for worker in dead:
            await self.reap(worker.decode())
        return expired_keys

    async def reap(self, worker: str) -> int:
        """Reaps a dead worker (see _REAP); how many sessions were lost with it."""
        lost = await self._reap(
            keys=[
                *self._index.keys, self._keys.workers, self._keys.owned + worker,
                self._keys.inbox(worker),
            ],
            args=[
                worker, self._keys.liveness, self._keys.owner, self._keys.ended,
                encode_gone(LOST), self._tombstone_ms,
            ],
        )  # fmt: skip
        if lost > 0:
            log.warning("a dead server process held %d sequences: they are lost", lost)
        return lost

    async def start(self, turns: Turns) -> None:
        self._turns = turns
        # Unreachable: said by the reachability; the sweep announces this worker once it can.
        with contextlib.suppress(StoreUnavailable):
            await self._announce()
        self._listener = asyncio.create_task(self._serve_inbox())

    @guarded("start")
    async def _announce(self) -> None:
        """This worker is alive and registered, and the data's generation noted."""
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.set(self._keys.liveness + self.worker, 1, px=round(LIVENESS_S * 1000))
            pipe.sadd(self._keys.workers, self.worker)
            await pipe.execute()
        await self._check_generation()

    @guarded("generation")
    async def _check_generation(self) -> None:
        """Whichever call notices first that Redis lost its data claims the sessions this
        process holds again (their states are intact here): a later sweep would otherwise
        find their ownership records gone and drop them. A claim that fails is tried again
        by the next check."""
        seen = self._generation.token
        if await self._generation.check():
            held = self._local.sessions()
            try:
                await self._claim(held, again=True)
            except BaseException:
                self._generation.token = seen
                raise
            # Those that ended while being claimed: their end found no record to drop.
            ended = [key for key in held if not self._local.holds(key)]
            if ended:
                await self._forget_all(ended)

    async def close(self) -> None:
        """Stops handing over and writes every state to Redis for whoever comes next."""
        # The listener stops at its next poll, and hand-overs under way finish: redis-py
        # can swallow a cancellation that lands inside a command (redis/redis-py#2028).
        self._closing = True
        if self._listener is not None:
            await self._listener
        await asyncio.gather(*self._handovers)
        held = len(self._local.sessions())
        try:
            await self._leave()
        except StoreUnavailable:
            log.warning("Redis is unreachable: the states of %d sequences are lost", held)
        await self._client.aclose()
        await self._waiting.aclose()
        if self._census is not None:
            self._census.close()
        await self._local.close()

    @guarded("close")
    async def _leave(self) -> None:
        await self._flush()
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.delete(self._keys.liveness + self.worker, self._keys.owned + self.worker)
            pipe.srem(self._keys.workers, self.worker)
            await pipe.execute()

    # Taking sessions from other workers.

    async def _acquire(
        self, keys: Sequence[SessionKey]
    ) -> dict[SessionKey, FailedPrecondition | bytes]:
        """Brings here those of `keys` that another worker owns or that wait in Redis.
        Returns, of the others, the errors of those whose stored state cannot serve and the
        records of those that ended lately (or were lost)."""
        found: dict[SessionKey, FailedPrecondition | bytes] = {}
        missing = [key for key in keys if not self._local.holds(key)]
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
            if not outcome:
                continue
            kind, value = outcome
            if kind == b"taken":
                try:
                    decoded = decode_record(key, value)
                    assert not isinstance(decoded, Gone)  # a live state, never a tombstone
                    state, progress = decoded
                    await self._local.save([key], state, [0], [progress])
                except FailedPrecondition as error:
                    found[key] = error
                else:
                    log.debug("took over %s (its state was handed over in Redis)", key.describe())
            elif kind == b"ended":
                found[key] = value
            else:
                held.setdefault(value.decode(), []).append(key)
        return held

    @guarded("take")
    async def _take_all(self, keys: Sequence[SessionKey]) -> list[list[bytes]]:
        lost, keep_ms = encode_gone(LOST), self._tombstone_ms
        async with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                name = member(key)
                await self._take(
                    keys=[
                        *self._index.keys, self._keys.owner + name, self._keys.state + name,
                        self._keys.ended + name, self._keys.owned + self.worker,
                    ],
                    args=[
                        self.worker, self._keys.liveness, name, lost, keep_ms, self._keys.owned
                    ],
                    client=pipe,
                )  # fmt: skip
            return await pipe.execute()

    @guarded("hand_over")
    async def _ask(self, owner: str, keys: list[SessionKey]) -> None:
        """Asks the owner to hand `keys` over and waits for its answer (or the timeout)."""
        log.debug("asking worker %s to hand over %d sessions", owner, len(keys))
        reply = f"{self._keys.prefix}reply:{uuid.uuid4().hex}"
        inbox = self._keys.inbox(owner)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.rpush(inbox, json.dumps([[member(key) for key in keys], reply]))
            pipe.pexpire(inbox, round(LIVENESS_S * 1000))  # a dead owner's inbox goes too
            await pipe.execute()
        await self._waiting.blpop([reply], timeout=self.handover_timeout_s)

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
    async def _poll_inbox(self) -> list[bytes] | None:
        return await self._waiting.blpop([self._keys.inbox(self.worker)], INBOX_POLL_S)

    async def _hand_over(self, keys: list[SessionKey], reply: str) -> None:
        # Unreachable: said by the reachability; the asking worker times out and says so.
        with contextlib.suppress(StoreUnavailable):
            await self._hand_over_all(keys, reply)

    @guarded("hand_over")
    async def _hand_over_all(self, keys: list[SessionKey], reply: str) -> None:
        for key in keys:
            await self._turns.take(key)  # waits for a step of the session in progress
            try:
                await self._give_up(key)
            finally:
                self._turns.give(key)
            log.debug("handed %s over to another worker", key.describe())
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.rpush(reply, 1)
            pipe.pexpire(reply, round(self.handover_timeout_s * 2000))
            await pipe.execute()

    async def _give_up(self, key: SessionKey, client: redis.asyncio.Redis | None = None) -> None:
        """Leaves the key's state in Redis for the next owner and drops it here."""
        record = self._local.record_of(key)
        if record is None:  # expired meanwhile: make that known instead
            tombstone = encode_gone(expired(self.idle_timeout_s))
            await self._forget_all([key], tombstone, client=client)
            return
        name = member(key)
        await self._release(
            keys=[self._keys.owner + name, self._keys.state + name, self._keys.owned + self.worker],
            args=[
                self.worker,
                encode_record(key, *record),
                round(self.idle_timeout_s * 1000),
                name,
            ],
            client=client,
        )
        await self._local.delete([key])
        self._touched.discard(key)
        metrics.SESSIONS_HANDED_OVER.labels(key.model, key.version).inc()

    async def _flush(self) -> None:
        sessions = self._local.sessions()
        log.debug("leaving %d session states in Redis for the next owner", len(sessions))
        for start in range(0, len(sessions), FLUSH_CHUNK):
            async with self._client.pipeline(transaction=False) as pipe:
                for key in sessions[start : start + FLUSH_CHUNK]:
                    await self._give_up(key, client=pipe)
                await pipe.execute()

    # Ownership records.

    @guarded("claim")
    async def _claim(self, keys: list[SessionKey], again: bool = False) -> None:
        """Records me as the owner of `keys` (new sessions; `again`: mine, after Redis lost
        its data, unless another worker has claimed one since)."""
        deadline = time.time() + self.idle_timeout_s
        for start in range(0, len(keys), FLUSH_CHUNK):
            chunk = keys[start : start + FLUSH_CHUNK]
            names = [member(key) for key in chunk]
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.set(self._keys.liveness + self.worker, 1, px=round(LIVENESS_S * 1000))
                pipe.sadd(self._keys.workers, self.worker)
                for name in names:
                    pipe.set(self._keys.owner + name, self.worker, nx=again)
                    if not again:
                        pipe.delete(self._keys.state + name)  # left by an earlier run of this id
                pipe.sadd(self._keys.owned + self.worker, *names)
                self._index.add(pipe, chunk, deadline)
                await pipe.execute()
        if again:
            log.warning("claimed the %d sequences this process holds again", len(keys))

    async def _forget_all(
        self, keys: Sequence[SessionKey], tombstone: bytes = b"", client: object = None
    ) -> None:
        await self._forget(
            keys=[*self._index.keys, self._keys.owned + self.worker],
            args=[
                self.worker, self._keys.owner, self._keys.ended, tombstone,
                self._tombstone_ms, *(member(key) for key in keys),
            ],
            client=client,
        )  # fmt: skip


def declare_dead(
    url: str,
    worker: str,
    idle_timeout_s: float,
    namespace: str = "rnnserve",
    timeout_s: float = 1.0,
) -> int:
    """For the supervisor, the moment a worker died: its liveness record goes and it is
    reaped at once (see _REAP), rather than when the record lapses. Returns how many
    sessions it held, which are lost; raises redis errors (the workers' sweeps reap it
    later then)."""
    keys = _Keys(namespace)
    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    index = SessionIndex(client, namespace)  # type: ignore[arg-type]  # for its key names
    try:
        client.delete(keys.liveness + worker)
        reap = client.register_script(_REAP)
        lost = reap(
            keys=[*index.keys, keys.workers, keys.owned + worker, keys.inbox(worker)],
            args=[
                worker, keys.liveness, keys.owner, keys.ended, encode_gone(LOST),
                round(tombstone_s(idle_timeout_s) * 1000),
            ],
        )  # fmt: skip
    finally:
        client.close()
    return int(lost)
