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

from rnnserve.service import metrics
from rnnserve.service.errors import InvalidArgument, ResourceExhausted, ServiceError
from rnnserve.service.sessions.state import SessionKey
from rnnserve.service.sessions.store import StateStore
from rnnserve.service.sessions.turns import Turns
from rnnserve.service.types import State

T = TypeVar("T")
# What a step computes: the state to start from -> its result and the new state.
Computation = Callable[[State], Awaitable[tuple[T, State]]]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RowStep:
    """One step of one session: one row of a batch."""

    key: SessionKey
    start: bool
    end: bool


def _order(key: SessionKey) -> tuple[str, int | str]:
    """A total order on the sessions of one model version (ids are ints or strings)."""
    return type(key.sequence_id).__name__, key.sequence_id


class SessionManager:
    def __init__(self, store: StateStore, max_sessions: int) -> None:
        self.store = store
        self.max_sessions = max_sessions
        self._turns = Turns()
        self._admitting = 0  # new sessions admitted but not yet stored
        self._sweeper: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    async def start(self) -> None:
        """Starts the store and the sweeper that drops idle sessions."""
        metrics.SESSIONS_LIMIT.set(self.max_sessions)
        await self.store.start(self._turns)
        metrics.STATE_STORE_UP.set(1)
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def close(self) -> None:
        # The sweeper is told to stop rather than cancelled: redis-py can swallow a
        # cancellation that lands inside a command (redis/redis-py#2028), which would leave
        # the sweeper running and this close waiting for it forever.
        self._closing.set()
        if self._sweeper is not None:
            await self._sweeper
        await self.store.close()

    async def step(
        self, key: SessionKey, start: bool, end: bool, initial: State, run: Computation[T]
    ) -> T:
        """Runs one request of session `key` and returns what `run` returned.

        `initial` is the state a start begins from (zeros or the client's h0/c0); on a
        continuation the stored state is copied into it. `run` gets the state to start from
        and returns its result and the new state. A start on an id in use restarts that
        session; an end frees the state after `run`. When `run` raises, nothing changes.
        Steps of one session run one at a time, in arrival order. A session that cannot
        step (not active, over the session limit) raises before `run`.
        """
        result, _ = await self.step_rows([RowStep(key, start, end)], initial, run, row_errors=False)
        return result

    async def step_rows(
        self, rows: Sequence[RowStep], state: State, run: Computation[T], *, row_errors: bool = True
    ) -> tuple[T, list[ServiceError | None]]:
        """Runs one step of each row's session (all of one model version) together.

        `state` is the batch's state, row i on axis 1: what row i starts from when it
        starts; a continuing row's stored state is copied into it. `run` gets `state` and
        returns its result and the batch's new state. Returns the result and each row's
        error (None for a row that stepped).

        Each row is a step as `step` describes. A row whose session cannot step fails alone
        (it runs from its initial state and keeps nothing), the other rows' states are
        stored; with `row_errors` false its error is raised instead, before `run`.
        """
        errors: list[ServiceError | None] = [None] * len(rows)
        was_stored = [not row.start for row in rows]
        admitted = 0
        async with self._serialized([row.key for row in rows]):
            try:
                await self._load(rows, state, errors)
                admitted = await self._admit(rows, errors, was_stored)
                first_error = next((error for error in errors if error is not None), None)
                if first_error is not None and not row_errors:
                    raise first_error
                result, new_state = await run(state)
                await self._store(rows, errors, new_state)
            finally:
                self._admitting -= admitted
        self._count(rows, errors, was_stored)
        return result, errors

    async def _load(
        self, rows: Sequence[RowStep], state: State, errors: list[ServiceError | None]
    ) -> None:
        """Copies each continuing row's stored state into its row of `state`."""
        continuing = [index for index, row in enumerate(rows) if not row.start]
        if not continuing:
            return
        loaded = await self.store.load([rows[i].key for i in continuing], state, continuing)
        for index, found in zip(continuing, loaded, strict=True):
            if found is False:
                errors[index] = InvalidArgument(
                    f"{rows[index].key.describe()} is not active: a sequence must begin with "
                    "sequence_start=true (it may have ended or expired)"
                )
            elif found is not True:
                errors[index] = found

    async def _admit(
        self, rows: Sequence[RowStep], errors: list[ServiceError | None], was_stored: list[bool]
    ) -> int:
        """Admits the new sessions among the starting rows, within the session limit, and
        returns how many: they count in `_admitting` until stored. The rest fail."""
        starting = [index for index, row in enumerate(rows) if row.start]
        if not starting:
            return 0
        present = await self.store.contains([rows[i].key for i in starting])
        new = []
        for index, stored in zip(starting, present, strict=True):
            was_stored[index] = stored
            if not stored:
                new.append(index)
        if not new:
            return 0
        room = max(0, self.max_sessions - await self.store.count() - self._admitting)
        for index in new[room:]:
            key = rows[index].key
            metrics.SESSIONS_REJECTED.labels(key.model, key.version).inc()
            errors[index] = ResourceExhausted(
                f"session limit reached: {self.max_sessions} active sessions "
                f"(max_sessions={self.max_sessions}); end a sequence or retry later"
            )
        admitted = min(room, len(new))
        self._admitting += admitted
        return admitted

    async def _store(
        self, rows: Sequence[RowStep], errors: list[ServiceError | None], state: State
    ) -> None:
        """Stores each stepped row's new state; an ended row's state is freed instead."""
        stepped = [index for index, error in enumerate(errors) if error is None]
        kept = [index for index in stepped if not rows[index].end]
        ended = [index for index in stepped if rows[index].end]
        if kept:
            await self.store.save([rows[i].key for i in kept], state, kept)
        if ended:
            await self.store.delete([rows[i].key for i in ended])

    @staticmethod
    def _count(
        rows: Sequence[RowStep], errors: list[ServiceError | None], was_stored: list[bool]
    ) -> None:
        started = ended = active = 0
        for row, error, stored in zip(rows, errors, was_stored, strict=True):
            if error is None:
                started += row.start
                ended += row.end
                active += int(not row.end) - int(stored)
        labels = (rows[0].key.model, rows[0].key.version)
        if started:
            metrics.SESSIONS_STARTED.labels(*labels).inc(started)
        if ended:
            metrics.SESSIONS_ENDED.labels(*labels).inc(ended)
        if active:
            metrics.SESSIONS_ACTIVE.labels(*labels).inc(active)

    @contextlib.asynccontextmanager
    async def _serialized(self, keys: list[SessionKey]) -> AsyncIterator[None]:
        """Holds the turn of every session in `keys` (no key twice), in arrival order.

        When another request holds one of the keys, the turns are taken in one global order
        (sorted ids), so requests naming the same sessions in any order cannot deadlock;
        when none is held, all are taken at once, without waiting.
        """
        if any(self._turns.held(key) for key in keys):
            taken: list[SessionKey] = []
            try:
                for key in sorted(keys, key=_order):
                    await self._turns.take(key)
                    taken.append(key)
            except BaseException:  # cancelled while waiting: give back what it took
                for key in taken:
                    self._turns.give(key)
                raise
        else:
            self._turns.take_free(keys)
        try:
            yield
        finally:
            for key in keys:
                self._turns.give(key)

    async def _sweep_forever(self) -> None:
        interval = min(1.0, self.store.idle_timeout_s / 4)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), interval)
            if self._closing.is_set():
                return
            try:
                expired = await self.store.expire()
            except Exception:  # a store outage must not end the sweeper
                metrics.STATE_STORE_UP.set(0)
                log.exception("sweeping expired sessions failed")
                continue
            metrics.STATE_STORE_UP.set(1)
            for key in expired:
                log.debug("%s expired (idle for %g s)", key.describe(), self.store.idle_timeout_s)
                metrics.SESSIONS_EXPIRED.labels(key.model, key.version).inc()
                metrics.SESSIONS_ACTIVE.labels(key.model, key.version).dec()
