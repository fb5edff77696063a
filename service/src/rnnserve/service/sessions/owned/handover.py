"""Handing this worker's sessions over: to the workers that ask for them (its inbox), each
once the step of it in progress has ended, and at a clean stop to Redis, for whoever steps
them next."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any

from redis.exceptions import RedisError

from rnnserve.service import metrics
from rnnserve.service.errors import Unavailable
from rnnserve.service.sessions.owned.held import Held
from rnnserve.service.sessions.owned.ownership import CHUNK, Ownership
from rnnserve.service.sessions.owned.worker import Worker, inbox_key, owned_key, push
from rnnserve.service.sessions.reachability import StoreUnavailable
from rnnserve.service.sessions.redis.client import Command, NotSent, Script
from rnnserve.service.sessions.redis.guard import guarded
from rnnserve.service.sessions.redis.keys import member, session_of
from rnnserve.service.sessions.redis.records import encode_gone, encode_record
from rnnserve.service.sessions.state import SessionKey, expired
from rnnserve.service.sessions.turns import Turns

log = logging.getLogger(__name__)

INBOX_POLL_S = 0.5  # the inbox listener's longest wait in Redis (and at a stop)

# KEYS: owner, state, my owned list. ARGV: me, state, ttl in ms, member. Leaves the state
# for the next owner: mine, or nobody's (Redis lost my record of it with its data, and I
# have not claimed it again yet), not another worker's (it started the id again).
_RELEASE = Script("""
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[3], ARGV[4])
return 1
""")


class Handover:
    """Serves this worker's inbox from its start to its stop, and gives up sessions: those
    asked for, and every one at a clean stop (flush)."""

    def __init__(
        self, worker: Worker, held: Held, ownership: Ownership, handover_timeout_s: float
    ) -> None:
        self.reachability = worker.reachability
        self._worker = worker
        self._held = held
        self._ownership = ownership
        self._handover_timeout_s = handover_timeout_s
        self._turns = Turns()  # the session manager's, once started
        self._listener: asyncio.Task[None] | None = None
        self._closing = False
        self._handovers: set[asyncio.Task[None]] = set()

    def start(self, turns: Turns) -> None:
        """Serves the inbox; `turns` are the session manager's."""
        self._turns = turns
        self._listener = asyncio.create_task(self._serve_inbox())

    async def stop(self) -> bool:
        """Stops serving the inbox, once the hand-overs under way have finished. Whether
        it was started (then the sessions it holds are for flush)."""
        # The listener stops at its next poll, and hand-overs under way finish: redis-py
        # can swallow a cancellation that lands inside a command (redis/redis-py#2028).
        self._closing = True
        if self._listener is None:
            return False
        await self._listener
        await asyncio.gather(*self._handovers)
        return True

    async def flush(self) -> None:
        """Leaves every state held here in Redis, for the next owner."""
        sessions = self._held.states.sessions()
        log.debug("leaving %d session states in Redis for the next owner", len(sessions))
        for start in range(0, len(sessions), CHUNK):
            await self._give_up(sessions[start : start + CHUNK])

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
        me = self._worker
        return await me.waiting.blpop(inbox_key(me.namespace, me.id), INBOX_POLL_S)

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
        await self._worker.redis.run(push(reply, "1", 2 * self._handover_timeout_s))

    async def _give_up(self, keys: Sequence[SessionKey]) -> None:
        """Leaves the keys' states in Redis for the next owner and drops them here."""
        me, space, held = self._worker.id, self._worker.space, self._held
        commands = []
        # Those not here (handed over already, on an earlier request) are left alone: the
        # asker's next take finds where they are.
        keys = [key for key in keys if held.states.holds(key)]
        for key in keys:
            record = held.states.record_of(key)
            if record is None:  # expired meanwhile: make that known instead
                gone = encode_gone(expired(held.idle_timeout_s))
                commands += self._ownership.forgetting([key], gone)
                continue
            name = member(key)
            bucket = space.bucket(name)
            commands.append(
                Command.call(
                    _RELEASE,
                    [
                        space.key("owner", name),
                        space.key("state", name),
                        owned_key(space, bucket, me),
                    ],
                    [me, encode_record(key, *record), round(held.idle_timeout_s * 1000), name],
                )
            )
        try:
            await self._worker.redis.run(commands, durable=True)
        except NotSent:  # nothing was released: the copies here are as sure as they were
            raise
        except BaseException:
            held.unsure.update(keys)
            raise
        await held.drop(keys)
        for key in keys:
            metrics.SESSIONS_HANDED_OVER.labels(key.model, key.version).inc()
