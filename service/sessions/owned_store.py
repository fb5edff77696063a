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

import redis.asyncio as redis

from rnnserve.service import metrics
from rnnserve.service.errors import FailedPrecondition, Unavailable
from rnnserve.service.sessions.memory_store import MemoryStore
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

# KEYS: owner, state, index, names, ended. ARGV: me, the worker-key prefix, the session's
# index member. Returns {'held', owner} while a live worker owns the session, {'taken',
# state} when the state was in Redis (now owned by me), {'ended', record} when there is no
# such session but a record of its recent end, {} when there is neither.
_TAKE = """
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. owner) == 1 then
  return {'held', owner}
end
local state = redis.call('GET', KEYS[2])
if not state then
  if owner then  -- its owner died (or dropped it): the session is gone
    redis.call('DEL', KEYS[1])
    redis.call('ZREM', KEYS[3], ARGV[3])
    redis.call('ZREM', KEYS[4], ARGV[3])
  end
  local ended = redis.call('GET', KEYS[5])
  if ended then return {'ended', ended} end
  return {}
end
redis.call('DEL', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1])
return {'taken', state}
"""
# KEYS: owner, state. ARGV: me, state, ttl in ms. Leaves the state for the next owner.
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[1])
return 1
"""
# KEYS: index, names. ARGV: me, the owner-key prefix, members. Ends sessions I own.
_FORGET = """
for i = 3, #ARGV do
  if redis.call('GET', ARGV[2] .. ARGV[i]) == ARGV[1] then
    redis.call('DEL', ARGV[2] .. ARGV[i])
    redis.call('ZREM', KEYS[1], ARGV[i])
    redis.call('ZREM', KEYS[2], ARGV[i])
  end
end
"""
# KEYS: index, names, my liveness key. ARGV: me, the owner-key prefix, deadline, liveness
# ms, cutoff, members. Keeps me alive, moves the deadlines of the members I own, drops
# index entries past the cutoff (sessions of workers that died) and returns the members I
# lost.
_REFRESH = """
redis.call('SET', KEYS[3], '1', 'PX', ARGV[4])
local lost = {}
for i = 6, #ARGV do
  if redis.call('GET', ARGV[2] .. ARGV[i]) == ARGV[1] then
    redis.call('ZADD', KEYS[1], ARGV[3], ARGV[i])
  else
    table.insert(lost, ARGV[i])
  end
end
for _, stale in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[5])) do
  redis.call('ZREM', KEYS[1], stale)
  redis.call('ZREM', KEYS[2], stale)
end
return lost
"""


class OwnedStore:
    def __init__(
        self,
        url: str,
        idle_timeout_s: float = 60.0,
        namespace: str = "rnnserve",
        handover_timeout_s: float = HANDOVER_TIMEOUT_S,
    ) -> None:
        self.handover_timeout_s = handover_timeout_s
        self.worker = uuid.uuid4().hex
        self._local = MemoryStore(idle_timeout_s)
        # Longer than any wait we ask of Redis (inbox polls, hand-over replies).
        socket_timeout = max(10.0, 2 * handover_timeout_s)
        self._client = redis.Redis.from_url(
            url, socket_timeout=socket_timeout, socket_connect_timeout=5
        )
        self._prefix = f"{namespace}:"
        self._index = SessionIndex(self._client, namespace)
        self._take = self._client.register_script(_TAKE)
        self._release = self._client.register_script(_RELEASE)
        self._forget = self._client.register_script(_FORGET)
        self._refresh = self._client.register_script(_REFRESH)
        self._touched: set[SessionKey] = set()  # saved since the last refresh
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
        if keys:
            await self._forget_all(keys)
        self._touched.difference_update(keys)
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
            async with self._client.pipeline(transaction=False) as pipe:
                prefix, keep_s = self._ended_prefix, self.idle_timeout_s
                write_records(pipe, prefix, keys, state, rows, progress, keep_s)
                await self._forget_all(keys, client=pipe)
                await pipe.execute()
        self._touched.difference_update(keys)

    async def count(self, principal: str | None = None) -> int:
        return await self._index.count(principal)

    async def expire(self) -> list[SessionKey]:
        """Drops my idle sessions, and keeps my ownership records alive (the sweeper calls
        this every second or more often)."""
        expired = await self._local.expire()
        self._touched.difference_update(expired)
        touched, self._touched = self._touched, set()
        now = time.time()
        async with self._client.pipeline(transaction=False) as pipe:
            if expired:
                await self._forget_all(expired, client=pipe)
            await self._refresh(
                keys=[
                    self._index.by_deadline, self._index.by_name, self._liveness_key(self.worker)
                ],
                args=[
                    self.worker, self._owner_prefix, now + self.idle_timeout_s,
                    round(LIVENESS_S * 1000), now - LIVENESS_S,
                    *(member(key) for key in touched),
                ],
                client=pipe,
            )  # fmt: skip
            *_, lost = await pipe.execute()
        if lost:  # another worker started these ids over: my states are stale
            await self._local.delete([session_of(name) for name in lost])
        return expired

    async def start(self, turns: Turns) -> None:
        self._turns = turns
        await self._client.set(self._liveness_key(self.worker), 1, px=round(LIVENESS_S * 1000))
        self._listener = asyncio.create_task(self._serve_inbox())

    async def close(self) -> None:
        """Stops handing over and writes every state to Redis for whoever comes next."""
        # The listener stops at its next poll, and hand-overs under way finish: redis-py
        # can swallow a cancellation that lands inside a command (redis/redis-py#2028).
        self._closing = True
        if self._listener is not None:
            await self._listener
        await asyncio.gather(*self._handovers)
        try:
            await self._flush()
            await self._client.delete(self._liveness_key(self.worker))
        except redis.RedisError:
            log.exception("writing %d session states to Redis failed", len(self._local.sessions()))
        await self._client.aclose()
        await self._local.close()

    # Taking sessions from other workers.

    async def _acquire(
        self, keys: Sequence[SessionKey]
    ) -> dict[SessionKey, FailedPrecondition | bytes]:
        """Brings here those of `keys` that another worker owns or that wait in Redis.
        Returns, of the others, the errors of those whose stored state cannot serve and the
        records of those that ended lately."""
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
                    state, progress = decode_record(key, value)
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

    async def _take_all(self, keys: Sequence[SessionKey]) -> list[list[bytes]]:
        async with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                name = member(key)
                await self._take(
                    keys=[
                        self._owner_prefix + name, self._state_prefix + name,
                        self._index.by_deadline, self._index.by_name, self._ended_prefix + name,
                    ],
                    args=[self.worker, self._liveness_prefix, name],
                    client=pipe,
                )  # fmt: skip
            return await pipe.execute()

    async def _ask(self, owner: str, keys: list[SessionKey]) -> None:
        """Asks the owner to hand `keys` over and waits for its answer (or the timeout)."""
        log.debug("asking worker %s to hand over %d sessions", owner, len(keys))
        reply = f"{self._prefix}reply:{uuid.uuid4().hex}"
        inbox = self._inbox(owner)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.rpush(inbox, json.dumps([[member(key) for key in keys], reply]))
            pipe.pexpire(inbox, round(LIVENESS_S * 1000))  # a dead owner's inbox goes too
            await pipe.execute()
        await self._client.blpop([reply], timeout=self.handover_timeout_s)

    # Handing my sessions to other workers.

    async def _serve_inbox(self) -> None:
        while not self._closing:
            try:
                request = await self._client.blpop([self._inbox(self.worker)], INBOX_POLL_S)
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

    async def _give_up(self, key: SessionKey, client: redis.Redis | None = None) -> None:
        """Leaves the key's state in Redis for the next owner and drops it here."""
        record = self._local.record_of(key)
        if record is None:  # expired meanwhile: make that known instead
            await self._forget_all([key], client=client)
            return
        name = member(key)
        await self._release(
            keys=[self._owner_prefix + name, self._state_prefix + name],
            args=[self.worker, encode_record(key, *record), round(self.idle_timeout_s * 1000)],
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

    async def _claim(self, keys: list[SessionKey]) -> None:
        deadline = time.time() + self.idle_timeout_s
        names = [member(key) for key in keys]
        async with self._client.pipeline(transaction=True) as pipe:
            for name in names:
                pipe.set(self._owner_prefix + name, self.worker)
                pipe.delete(self._state_prefix + name)  # left by an earlier run of this id
            self._index.add(pipe, names, deadline)
            await pipe.execute()

    async def _forget_all(
        self, keys: Sequence[SessionKey], client: redis.Redis | None = None
    ) -> None:
        await self._forget(
            keys=[self._index.by_deadline, self._index.by_name],
            args=[self.worker, self._owner_prefix, *(member(key) for key in keys)],
            client=client,
        )

    @property
    def _owner_prefix(self) -> str:
        return self._prefix + "owner:"

    @property
    def _state_prefix(self) -> str:
        return self._prefix + "state:"

    @property
    def _ended_prefix(self) -> str:
        return self._prefix + "ended:"

    @property
    def _liveness_prefix(self) -> str:
        return self._prefix + "worker:"

    def _liveness_key(self, worker: str) -> str:
        return self._liveness_prefix + worker

    def _inbox(self, worker: str) -> str:
        return f"{self._prefix}inbox:{worker}"
