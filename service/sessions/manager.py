"""Sequences: the state carried from one request of a session to the next.

`SessionManager.step` runs one request of a session: it picks the state the request starts
from, runs the caller's computation on it and stores the state it returns, so that a
sequence sent piece by piece gives the answers of the whole sequence sent at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from service import metrics
from service.errors import InvalidArgument, ResourceExhausted
from service.sessions.state import SessionKey, State, layout_of
from service.sessions.store import StateStore

T = TypeVar("T")
Step = Callable[[State], Awaitable[tuple[T, State]]]

log = logging.getLogger(__name__)


@dataclass
class _KeyLock:
    lock: asyncio.Lock
    users: int = 0


class SessionManager:
    def __init__(self, store: StateStore, max_sessions: int) -> None:
        self.store = store
        self.max_sessions = max_sessions
        self._locks: dict[SessionKey, _KeyLock] = {}
        self._admitting = 0  # new sessions admitted but not yet stored
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Starts the sweeper that drops idle sessions."""
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.store.close()

    async def step(
        self, key: SessionKey, start: bool, end: bool, initial: State, run: Step[T]
    ) -> T:
        """Runs one request of session `key` and returns what `run` returned.

        `initial` is the state a start begins from (zeros or the client's h0/c0); on a
        continuation it gives the shapes the stored state must have. `run` gets the state to
        start from and returns its result and the new state. A start on an id in use restarts
        that session; an end frees the state after `run`. When `run` raises, nothing changes.
        Steps of one session run one at a time, in arrival order.
        """
        labels = (key.model, key.version)
        async with self._serialized(key):
            if start:
                was_stored = await self.store.contains(key)
                if not was_stored:
                    await self._admit(key)
                state = initial
            else:
                was_stored = True
                state = await self._load(key, initial)
            try:
                result, new_state = await run(state)
                if end:
                    await self.store.delete(key)
                else:
                    await self.store.save(key, new_state)
            finally:
                if start and not was_stored:
                    self._admitting -= 1
        if start:
            metrics.SESSIONS_STARTED.labels(*labels).inc()
        if end:
            metrics.SESSIONS_ENDED.labels(*labels).inc()
        metrics.SESSIONS_ACTIVE.labels(*labels).inc(int(not end) - int(was_stored))
        return result

    async def _load(self, key: SessionKey, initial: State) -> State:
        state = await self.store.load(key, layout_of(initial))
        if state is None:
            raise InvalidArgument(
                f"{key.describe()} is not active: a sequence must begin with "
                "sequence_start=true (it may have ended or expired)"
            )
        return state

    async def _admit(self, key: SessionKey) -> None:
        if await self.store.count() + self._admitting >= self.max_sessions:
            metrics.SESSIONS_REJECTED.labels(key.model, key.version).inc()
            raise ResourceExhausted(
                f"session limit reached: {self.max_sessions} active sessions "
                f"(max_sessions={self.max_sessions}); end a sequence or retry later"
            )
        self._admitting += 1

    @contextlib.asynccontextmanager
    async def _serialized(self, key: SessionKey) -> AsyncIterator[None]:
        # asyncio.Lock wakes waiters first come, first served: arrival order is kept.
        # The lock lives only while someone uses it, so memory follows the traffic.
        entry = self._locks.setdefault(key, _KeyLock(asyncio.Lock()))
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[key]

    async def _sweep_forever(self) -> None:
        interval = min(1.0, self.store.idle_timeout_s / 4)
        while True:
            await asyncio.sleep(interval)
            try:
                expired = await self.store.expire()
            except Exception:  # a store outage must not end the sweeper
                log.exception("sweeping expired sessions failed")
                continue
            for key in expired:
                metrics.SESSIONS_EXPIRED.labels(key.model, key.version).inc()
                metrics.SESSIONS_ACTIVE.labels(key.model, key.version).dec()
