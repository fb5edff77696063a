"""Sequences: the state carried from one request of a session to the next.

`SessionManager.step` runs one request of a session: it picks the state the request starts
from, runs the caller's computation on it and stores the state it returns, so that a
sequence sent piece by piece gives the answers of the whole sequence sent at once.
`SessionManager.step_rows` does the same for many sessions in one computation, one batch
row each (multi-session requests); `step` is its one-row case.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from service import metrics
from service.errors import InvalidArgument, ResourceExhausted, ServiceError
from service.sessions.state import SessionKey, State, layout_of
from service.sessions.store import StateStore

T = TypeVar("T")
Step = Callable[[State], Awaitable[tuple[T, State]]]
RowsStep = Callable[[list[State | None]], Awaitable[tuple[T, list[State]]]]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RowStep:
    """One step of one session: `initial` is the state a start begins from."""

    key: SessionKey
    start: bool
    end: bool
    initial: State


def _order(key: SessionKey) -> tuple[str, int | str]:
    """A total order on the sessions of one model version (ids are ints or strings)."""
    return type(key.sequence_id).__name__, key.sequence_id


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
        Steps of one session run one at a time, in arrival order. A session that cannot
        step (not active, over the session limit) raises before `run`.
        """

        async def run_one(states: list[State | None]) -> tuple[T, list[State]]:
            (state,) = states
            assert state is not None  # a failed row raised before run
            result, new_state = await run(state)
            return result, [new_state]

        result, _ = await self.step_rows(
            [RowStep(key, start, end, initial)], run_one, row_errors=False
        )
        return result

    async def step_rows(
        self, rows: Sequence[RowStep], run: RowsStep[T], *, row_errors: bool = True
    ) -> tuple[T, list[ServiceError | None]]:
        """Runs one step of each row's session together: `run` gets each row's state to
        start from (None for a row that failed) and returns its result and each row's new
        state. Returns the result and each row's error (None for a row that stepped).

        Each row is a step as `step` describes. A row whose session cannot step fails alone
        and keeps nothing, the other rows' states are stored; with `row_errors` false its
        error is raised instead. The sessions are held in a fixed order (sorted ids), so
        requests naming the same sessions in any order cannot deadlock.
        """
        errors: list[ServiceError | None] = [None] * len(rows)
        states: list[State | None] = [None] * len(rows)
        was_stored = [False] * len(rows)
        admitted: list[SessionKey] = []  # new sessions, counted in _admitting until stored
        async with contextlib.AsyncExitStack() as held:
            for row in sorted(range(len(rows)), key=lambda i: _order(rows[i].key)):
                await held.enter_async_context(self._serialized(rows[row].key))
            try:
                for index, row in enumerate(rows):
                    try:
                        was_stored[index], states[index] = await self._begin(row, admitted)
                    except ServiceError as error:
                        if not row_errors:
                            raise
                        errors[index] = error
                result, new_states = await run(states)
                for row, error, new_state in zip(rows, errors, new_states, strict=True):
                    if error is not None:
                        continue
                    if row.end:
                        await self.store.delete(row.key)
                    else:
                        await self.store.save(row.key, new_state)
            finally:
                self._admitting -= len(admitted)
        for row, error, stored in zip(rows, errors, was_stored, strict=True):
            if error is None:
                self._count(row, stored)
        return result, errors

    async def _begin(self, row: RowStep, admitted: list[SessionKey]) -> tuple[bool, State]:
        """Whether the row's session held state, and the state the row starts from; a new
        session is admitted (within the session limit) and added to `admitted`."""
        if not row.start:
            return True, await self._load(row.key, row.initial)
        was_stored = await self.store.contains(row.key)
        if not was_stored:
            await self._admit(row.key)
            admitted.append(row.key)
        return was_stored, row.initial

    @staticmethod
    def _count(row: RowStep, was_stored: bool) -> None:
        labels = (row.key.model, row.key.version)
        if row.start:
            metrics.SESSIONS_STARTED.labels(*labels).inc()
        if row.end:
            metrics.SESSIONS_ENDED.labels(*labels).inc()
        metrics.SESSIONS_ACTIVE.labels(*labels).inc(int(not row.end) - int(was_stored))

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
