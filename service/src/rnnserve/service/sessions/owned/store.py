"""The owned store (see __init__.py): the StateStore the session manager calls, each call
passed to the part whose job it is."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Sequence

from redis.exceptions import RedisError

from rnnserve.service.errors import FailedPrecondition, Unavailable
from rnnserve.service.redis_url import where
from rnnserve.service.sessions.owned.generation import GenerationCheck
from rnnserve.service.sessions.owned.handover import Handover
from rnnserve.service.sessions.owned.held import Held
from rnnserve.service.sessions.owned.liveness import Liveness
from rnnserve.service.sessions.owned.ownership import Ownership
from rnnserve.service.sessions.owned.reaping import Reaper
from rnnserve.service.sessions.owned.takeover import HANDOVER_TIMEOUT_S, Takeover
from rnnserve.service.sessions.owned.worker import Worker
from rnnserve.service.sessions.reachability import Reachability, StoreUnavailable
from rnnserve.service.sessions.redis.census import RedisCensus
from rnnserve.service.sessions.redis.client import RedisClient
from rnnserve.service.sessions.redis.guard import guarded
from rnnserve.service.sessions.redis.index import SessionIndex
from rnnserve.service.sessions.redis.keys import session_of
from rnnserve.service.sessions.redis.records import encode_gone, load_record, write_records
from rnnserve.service.sessions.state import (
    ABSENT,
    Conflict,
    Loaded,
    Progress,
    SessionKey,
    expired,
)
from rnnserve.service.sessions.turns import Turns
from rnnserve.service.types import State

log = logging.getLogger(__name__)


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
        self.worker = worker or uuid.uuid4().hex
        self.reachability = Reachability("owned", where(url))
        self._url, self._namespace, self._timeout_s = url, namespace, timeout_s
        self._redis = RedisClient(url, namespace, timeout_s, durability, durability_timeout_s)
        self._waiting = RedisClient(url, namespace, max(10.0, 2 * handover_timeout_s))
        me = Worker(self.worker, namespace, self._redis, self._waiting, self.reachability)
        self._held = Held(idle_timeout_s)
        self._index = SessionIndex(self._redis)
        self._ownership = Ownership(me, self._held)
        self._liveness = Liveness(me, self._held)
        self._generation = GenerationCheck(me, self._held, self._ownership)
        self._takeover = Takeover(me, self._held, handover_timeout_s)
        self._handover = Handover(me, self._held, self._ownership, handover_timeout_s)
        self._reaper = Reaper(me, self._held)
        self._census: RedisCensus | None = None

    @property
    def idle_timeout_s(self) -> float:
        return self._held.idle_timeout_s

    @idle_timeout_s.setter
    def idle_timeout_s(self, seconds: float) -> None:
        self._held.states.idle_timeout_s = seconds

    # load, save and contains reach Redis only for sessions this process does not hold (and
    # new ones): what reaches it is guarded in the parts, so that a step of a session held
    # here, served without Redis, does not count as Redis answering.

    async def load(
        self, keys: Sequence[SessionKey], into: State, rows: Sequence[int]
    ) -> list[Loaded]:
        elsewhere = await self._takeover.acquire(keys)
        loaded = await self._held.states.load(keys, into, rows)
        for index, (key, row) in enumerate(zip(keys, rows, strict=True)):
            found = elsewhere.get(key)
            if isinstance(found, bytes):  # the record of its recent end
                loaded[index] = load_record(key, found, into, row, ended=True)
            elif found is not None:
                loaded[index] = found
        if any(one is None for one in loaded):
            await self._generation.check()
            loaded = [
                self._generation.lost(key) if one is None else one
                for key, one in zip(keys, loaded, strict=True)
            ]
        return loaded

    async def save(
        self,
        keys: Sequence[SessionKey],
        state: State,
        rows: Sequence[int],
        progress: Sequence[Progress],
    ) -> list[Conflict | None]:
        """Writes every step here: a session has one owner, which steps it one step at a
        time (its session manager's turns), and hands it over only between steps. A start
        that found no sequence (Progress.prior ABSENT) is not written when another worker
        owns the id by now: it began the sequence, and steps it, meanwhile."""
        new = [key for key in keys if not self._held.states.holds(key)]
        held_elsewhere: set[SessionKey] = set()
        if new:
            absent = {key for key, one in zip(keys, progress, strict=True) if one.prior == ABSENT}
            held_elsewhere = await self._ownership.claim(new, if_free=absent)
        saved: list[Conflict | None] = [
            Conflict(None) if key in held_elsewhere else None for key in keys
        ]
        if held_elsewhere:
            kept = [i for i, key in enumerate(keys) if key not in held_elsewhere]
            keys, rows = [keys[i] for i in kept], [rows[i] for i in kept]
            progress = [progress[i] for i in kept]
        await self._held.states.save(keys, state, rows, progress)
        self._held.touched.update(keys)
        return saved

    async def contains(self, keys: Sequence[SessionKey]) -> list[bool]:
        elsewhere = await self._takeover.acquire(keys)
        found = await self._held.states.contains(keys)
        return [
            one or isinstance(elsewhere.get(key), FailedPrecondition)
            for key, one in zip(keys, found, strict=True)
        ]

    @guarded("delete")
    async def delete(self, keys: Sequence[SessionKey]) -> list[bool]:
        # Redis first: should it fail, the sessions are as they were.
        with self._held.ending_of(keys):
            await self._redis.run(self._ownership.forgetting(keys), durable=True)
            return await self._held.drop(keys)

    @guarded("end", writes=True)
    async def end(
        self,
        keys: Sequence[SessionKey],
        state: State,
        rows: Sequence[int],
        progress: Sequence[Progress],
    ) -> list[Conflict | None]:
        if keys:  # Redis first: should it fail, a retry of the final step finds the state
            space, keep_s = self._redis.keys, self.idle_timeout_s
            records = write_records(space, "ended", keys, state, rows, progress, keep_s, ended=True)
            with self._held.ending_of(keys):
                await self._redis.run([*records, *self._ownership.forgetting(keys)], durable=True)
                await self._held.drop(keys)
        return [None] * len(keys)

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
        await self._generation.check()
        expired_keys = await self._held.states.expire()
        self._held.forget(expired_keys)
        touched, self._held.touched = self._held.touched, set()
        tombstone = encode_gone(expired(self.idle_timeout_s))
        forgetting = self._ownership.forgetting(expired_keys, tombstone)
        refreshes = self._liveness.refreshing(touched)
        replies = await self._redis.run([*forgetting, *refreshes])
        lost, dead, orphans = self._liveness.outcome(replies[len(forgetting) :])
        # Another worker started these ids over: my states are stale. Not those taken or
        # stepped here while the refresh was under way: handed over and taken back since,
        # they are mine again (dropping them would lose live sessions).
        stale = [key for key in map(session_of, lost) if key not in self._held.touched]
        if stale:
            await self._held.states.delete(stale)
        # Redis lost my records of these (its data, since the generation check above): held
        # here, they are claimed again, as that check claims the others.
        await self._ownership.claim_again(map(session_of, orphans))
        for worker in dead:
            await self._reaper.reap(worker.decode())
        return expired_keys

    async def start(self, turns: Turns) -> None:
        await self._redis.check()  # a URL that names the wrong kind of Redis stops the start
        # Unreachable: said by the reachability; the sweep announces this worker once it can.
        with contextlib.suppress(StoreUnavailable):
            await self._announce()
        self._handover.start(turns)

    @guarded("start")
    async def _announce(self) -> None:
        """This worker is alive and registered (in every bucket), and the data's generation
        noted."""
        await self._redis.run(self._liveness.announcing())
        await self._generation.check()

    async def close(self) -> None:
        """Stops handing over and writes every state to Redis for whoever comes next."""
        if await self._handover.stop():  # started: hand everything over
            held = len(self._held.states.sessions())
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
        await self._held.states.close()

    @guarded("close")
    async def _leave(self) -> None:
        await self._handover.flush()
        await self._redis.run(self._liveness.leaving())
