"""Sequences: the state carried from one request of a session to the next.

`SessionManager.step` runs one request of a session: it picks the state the request starts
from, runs the caller's computation on it and stores the state it returns, so that a
sequence sent piece by piece gives the answers of the whole sequence sent at once. It
counts the time steps each session consumed and, by the offset a step carries, applies it,
answers a retry of the last step again, or refuses it (accounting.py).
`SessionManager.step_rows` does the same for many sessions in one computation, one batch
row each (multi-session requests); `step` is its one-row case, and runs the most common
step, a continuation without an offset, without the batch's lists (`_continue`).
`SessionManager.continue_rows` is the many-row counterpart: rows of live sessions that all
continue without an offset, stepped with arrays of step counts, without a Progress or
Outcome per row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import numpy as np

from rnnserve.service import metrics
from rnnserve.service.errors import FailedPrecondition, ResourceExhausted
from rnnserve.service.sessions.accounting import Outcome, RowStep, answer_of, judge, refusal
from rnnserve.service.sessions.reachability import StoreUnavailable
from rnnserve.service.sessions.state import (
    ABSENT,
    Answer,
    LastStep,
    Loaded,
    Progress,
    SessionKey,
)
from rnnserve.service.sessions.store import LiveRows, StateStore
from rnnserve.service.sessions.turns import Turns
from rnnserve.service.types import State

T = TypeVar("T")
# What a step computes: the state to start from -> its result and the new state.
Computation = Callable[[State], Awaitable[tuple[T, State]]]
# A result's outputs but the states (rows on axis 0), of which an applied step that carried
# an offset keeps its row, as its answer to a retry.
Answers = Callable[[T], Answer]

log = logging.getLogger(__name__)


def _order(key: SessionKey) -> tuple[str, int | str]:
    """A total order on the sessions of one model version (ids are ints or strings)."""
    return type(key.sequence_id).__name__, key.sequence_id


class SessionManager:
    def __init__(
        self, store: StateStore, max_sessions: int, max_sessions_per_principal: int | None = None
    ) -> None:
        self.store = store
        self._live_rows = store if isinstance(store, LiveRows) else None
        self.max_sessions = max_sessions
        self.max_sessions_per_principal = max_sessions_per_principal
        self._turns = Turns()
        # New sessions admitted but not yet stored, in all and by principal.
        self._admitting = 0
        self._admitting_by: Counter[str] = Counter()
        self._sweeper: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    async def start(self) -> None:
        """Starts the store and the sweeper that drops idle sessions. A store that cannot
        be reached yet does not stop the server: its requests answer UNAVAILABLE, and
        health says NOT_SERVING, until it answers."""
        metrics.SESSIONS_LIMIT.set(self.max_sessions)
        with contextlib.suppress(StoreUnavailable):  # said by the store's reachability
            await self.store.start(self._turns)
        metrics.STATE_STORE_UP.set(int(self.store.reachability.up))
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
        self, row: RowStep, initial: State, run: Computation[T], answers: Answers[T]
    ) -> tuple[T | None, Outcome]:
        """Runs one request of session `row.key`: what `run` returned, and the outcome.

        `initial` is the state a start begins from (zeros or the client's h0/c0); on a
        continuation the stored state is copied into it. `run` gets the state to start from
        and returns its result and the new state; `answers` gives a result's outputs to keep
        for a retry. A start on an id in use restarts that session; an end frees the state
        after `run`. When `run` raises, nothing changes. Steps of one session run one at a
        time, in arrival order. A session that cannot step (not active, over a session
        limit, at another offset) raises before `run`. A retry of the session's last step
        (accounting.py) is not applied: its kept answer comes back in the outcome, without
        `run` (the result is None), or, for the final step of an ended session, `run`
        computes it again from the state that step started from (copied into `initial`)
        and nothing is stored.
        """
        if not row.start and row.offset is None:
            return await self._continue(row, initial, run)
        stepped = await self.step_rows([row], initial, run, answers, row_errors=False)
        result, [outcome] = stepped
        return result, outcome

    async def _continue(self, row: RowStep, state: State, run: Computation[T]) -> tuple[T, Outcome]:
        """`step` of a continuation without an offset, most steps: step_rows' one-row case
        without its lists. Such a step admits no session (it starts none) and is never a
        retry (one needs an offset): it is applied on the count its session holds, or
        refused, and keeps no answer."""
        key = row.key
        await self._turns.take(key)
        try:
            [found] = await self.store.load([key], state, [0])
            outcome = judge(row, found)
            if outcome.error is not None:
                raise outcome.error
            result, new_state = await run(state)
            progress = [self._progress(row, outcome, {}, 0)]
            if row.end:
                [conflict] = await self.store.end([key], state, [0], progress)
            else:
                [conflict] = await self.store.save([key], new_state, [0], progress)
            if conflict is not None:  # another attempt at the step won
                raise refusal(row, conflict)
        finally:
            self._turns.give(key)
        if row.end:
            self._counted(key, ended=1)
        return result, outcome

    @property
    def continues_rows(self) -> bool:
        """Whether `continue_rows` can step rows at all (its store is a LiveRows)."""
        return self._live_rows is not None

    async def continue_rows(
        self, keys: Sequence[SessionKey], lengths: Sequence[int], state: State, run: Computation[T]
    ) -> tuple[T, np.ndarray] | None:
        """`step_rows` of rows none of which starts, ends or carries an offset (`lengths`:
        each row's time steps), when every row's session is live: each is applied on the
        count its session holds (`judge`'s "apply"), and none keeps an answer. Returns the
        result and each row's count after the step, loaded and saved as one array without
        a RowStep, Outcome or Progress per row. None, having run nothing and changed
        nothing, when the store offers no such step (not a LiveRows) or some session is not
        live: `step_rows` then says what becomes of each row."""
        store = self._live_rows
        if store is None:
            return None
        async with self._turns.holding(keys, _order):
            live = store.load_live(keys, state)
            if live is None:
                return None
            result, new_state = await run(state)
            live.counts += lengths
            store.save_live(live, new_state)
        return result, live.counts

    async def step_rows(
        self,
        rows: Sequence[RowStep],
        state: State,
        run: Computation[T],
        answers: Answers[T],
        *,
        row_errors: bool = True,
    ) -> tuple[T | None, list[Outcome]]:
        """Runs one step of each row's session (all of one model version) together.

        `state` is the batch's state, row i on axis 1: what row i starts from when it
        starts; a continuing row's stored state is copied into it. `run` gets `state` and
        returns its result and the batch's new state. Returns the result and each row's
        outcome.

        Each row is a step as `step` describes. A row whose session cannot step fails alone
        (it runs from its initial state and keeps nothing), a retried row runs too (a
        replay's outputs are for the caller to replace with its kept answer) and keeps
        nothing, the other rows' states are stored; with `row_errors` false the error is
        raised instead, before `run`, and `run` is left out when the row is a replay.
        """
        admitted: list[SessionKey] = []
        async with self._turns.holding([row.key for row in rows], _order):
            try:
                outcomes, stored = await self._judge(rows, state)
                admitted = await self._admit(rows, outcomes, stored)
                if not row_errors:
                    for outcome in outcomes:
                        if outcome.error is not None:
                            raise outcome.error
                result = None
                if row_errors or any(outcome.kind != "replay" for outcome in outcomes):
                    result, new_state = await run(state)
                    await self._store(rows, outcomes, state, new_state, result, answers)
                    if not row_errors and outcomes[0].error is not None:
                        raise outcomes[0].error  # another attempt at the step won
            finally:
                if admitted:
                    self._admitting -= len(admitted)
                    self._admitting_by.subtract(key.principal for key in admitted)
        self._count(rows, outcomes)
        return result, outcomes

    async def _judge(
        self, rows: Sequence[RowStep], state: State
    ) -> tuple[list[Outcome], list[bool | None]]:
        """Each row's outcome, from what the store holds of its session, and whether each
        session held state before (None: not known yet, for starts not loaded).

        Continuing rows are loaded, and so are starts that carry an offset (a retry of a
        session's first step is answered again); a start that is applied after all gets
        back the state it starts from."""
        found: list[Loaded] = [None] * len(rows)
        stored: list[bool | None] = [None if row.start else True for row in rows]
        loading = [i for i, row in enumerate(rows) if not row.start or row.offset is not None]
        starts = [i for i in loading if rows[i].start]
        if starts:
            initial = {name: array[:, starts] for name, array in state.items()}  # copies
        if loading:
            loaded = await self.store.load([rows[i].key for i in loading], state, loading)
            for index, one in zip(loading, loaded, strict=True):
                found[index] = one
        outcomes = [judge(row, one) for row, one in zip(rows, found, strict=True)]
        for position, index in enumerate(starts):
            one = found[index]
            # Holding state: a live session's progress, or a state that cannot serve.
            live = isinstance(one, Progress) and not one.ended
            stored[index] = isinstance(one, FailedPrecondition) or live
            if isinstance(one, Progress) and live:
                outcomes[index].prior = one.offset
            if outcomes[index].kind == "apply":
                for name, array in state.items():
                    array[:, index] = initial[name][:, position]
        return outcomes, stored

    async def _admit(
        self, rows: Sequence[RowStep], outcomes: list[Outcome], stored: list[bool | None]
    ) -> list[SessionKey]:
        """Admits the new sessions among the starting rows, within the session limits, and
        returns them: they count in `_admitting` until stored. The rest fail."""
        starting = [i for i, row in enumerate(rows) if row.start and outcomes[i].kind == "apply"]
        unknown = [i for i in starting if stored[i] is None]
        if unknown:
            present = await self.store.contains([rows[i].key for i in unknown])
            for index, one in zip(unknown, present, strict=True):
                stored[index] = one
        new = [i for i in starting if not stored[i]]
        for index in new:
            outcomes[index].prior = ABSENT
        if not new:
            return []
        room = max(0, self.max_sessions - await self.store.count() - self._admitting)
        for index in new[room:]:
            self._reject(
                rows[index].key,
                outcomes[index],
                f"session limit reached: {self.max_sessions} active sessions "
                f"(max_sessions={self.max_sessions})",
            )
        new = new[:room]
        if self.max_sessions_per_principal is not None:
            new = await self._admit_per_principal(rows, outcomes, new)
        admitted = [rows[i].key for i in new]
        self._admitting += len(admitted)
        self._admitting_by.update(key.principal for key in admitted)
        return admitted

    async def _admit_per_principal(
        self, rows: Sequence[RowStep], outcomes: list[Outcome], new: list[int]
    ) -> list[int]:
        limit = self.max_sessions_per_principal
        assert limit is not None
        kept = []
        for principal in dict.fromkeys(rows[i].key.principal for i in new):
            held = await self.store.count(principal) + self._admitting_by[principal]
            mine = [i for i in new if rows[i].key.principal == principal]
            room = max(0, limit - held)
            kept += mine[:room]
            for index in mine[room:]:
                self._reject(
                    rows[index].key,
                    outcomes[index],
                    f"session limit of principal {principal!r} reached: {held} active "
                    f"sessions (max_sessions_per_principal={limit})",
                )
        return sorted(kept)

    @staticmethod
    def _reject(key: SessionKey, outcome: Outcome, why: str) -> None:
        metrics.SESSIONS_REJECTED.labels(key.model, key.version).inc()
        outcome.fail(ResourceExhausted(f"{why}; end a sequence or retry later"))

    async def _store(
        self,
        rows: Sequence[RowStep],
        outcomes: list[Outcome],
        state: State,
        new_state: State,
        result: T,
        answers: Answers[T],
    ) -> None:
        """Stores each applied row's new state and progress (its answer kept when the step
        carried an offset); an ended row's state is freed instead, leaving a record of its
        end (with its final step, and `state`, the state it started from, when it carried
        an offset). A row whose write the store refused (the session changed since it was
        loaded: see state.Conflict) fails, applied by none of it."""
        kept: list[int] = []  # one pass sorts the applied rows: most steps are one row
        recorded: list[int] = []
        for index, (row, outcome) in enumerate(zip(rows, outcomes, strict=True)):
            if outcome.kind == "apply":
                (recorded if row.end else kept).append(index)
        if kept:
            answered = answers(result) if any(rows[i].offset is not None for i in kept) else {}
            progress = [self._progress(rows[i], outcomes[i], answered, i) for i in kept]
            saved = await self.store.save([rows[i].key for i in kept], new_state, kept, progress)
            for index, conflict in zip(kept, saved, strict=True):
                if conflict is not None:
                    outcomes[index].fail(refusal(rows[index], conflict))
        if recorded:
            progress = [self._progress(rows[i], outcomes[i], {}, i) for i in recorded]
            ended = await self.store.end([rows[i].key for i in recorded], state, recorded, progress)
            for index, conflict in zip(recorded, ended, strict=True):
                if conflict is not None:
                    outcomes[index].fail(refusal(rows[index], conflict))

    @staticmethod
    def _progress(row: RowStep, outcome: Outcome, outputs: Answer, index: int) -> Progress:
        """What an applied step leaves: its count, and, when it carried an offset, itself
        with its row of `outputs` as its answer; the count it was applied on (or found)."""
        prior = outcome.prior
        if row.offset is None:
            return Progress(outcome.offset, prior=prior)
        last = LastStep(row.length, row.digest, answer_of(outputs, index))
        return Progress(outcome.offset, last, prior=prior)

    @classmethod
    def _count(cls, rows: Sequence[RowStep], outcomes: list[Outcome]) -> None:
        started = ended = retried = 0
        for row, outcome in zip(rows, outcomes, strict=True):
            if outcome.kind == "apply":
                started += row.start
                ended += row.end
            retried += outcome.kind in ("replay", "rerun")
        cls._counted(rows[0].key, started, ended, retried)

    @staticmethod
    def _counted(key: SessionKey, started: int = 0, ended: int = 0, retried: int = 0) -> None:
        """The sessions that steps of `key`'s model version started, ended and retried."""
        labels = (key.model, key.version)
        if retried:
            metrics.SEQUENCE_RETRIES.labels(*labels).inc(retried)
        if started:
            metrics.SESSIONS_STARTED.labels(*labels).inc(started)
        if ended:
            metrics.SESSIONS_ENDED.labels(*labels).inc(ended)

    async def _sweep_forever(self) -> None:
        interval = min(1.0, self.store.idle_timeout_s / 4)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), interval)
            if self._closing.is_set():
                return
            try:
                expired = await self.store.expire()
            except StoreUnavailable:  # said once by the store's reachability; try again
                continue
            except Exception:  # a bug must not end the sweeper either
                log.exception("sweeping expired sessions failed")
                continue
            for key in expired:
                log.debug("%s expired (idle for %g s)", key.describe(), self.store.idle_timeout_s)
                metrics.SESSIONS_EXPIRED.labels(key.model, key.version).inc()
