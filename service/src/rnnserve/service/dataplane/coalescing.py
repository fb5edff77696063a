"""Steps of different sessions that arrive together run as one multi-session step.

Many streams send their next steps in bunches: one turn of the event loop wakes the
handlers of many messages. A step that may join others (a continuation without
`sequence_offset` of one row, run on the event loop: Compute.coalesces, Task.piece_key)
waits in its model version's `_Pending` instead of running at once; the first to wait
starts the task that runs the batch in the loop's next turn, by when the steps that arrived
in this one have joined. The batch is stepped as a multi-session request's steady case is
(SessionManager.continue_rows: the sessions' turns, one gather of their states, one ORT run
of the stacked pieces, one scatter), and each step gets its row of the outputs and its
sequence's count.

A batch answers each step exactly as the step alone, bit for bit, or not at all. Rows of a
recurrent network do not mix, but ONNX Runtime may round a batch's rows unlike a lone row's
(its RNN cell does, its LSTM and GRU did not here), and a user's graph may mix them (a
normalisation over the batch). So the first batches of each shape and size are checked:
each row is run again alone, from its row of the batch's state, and its outputs, states
among them, compared bit for bit with the batch's. ONNX Runtime picks its kernels by shape,
not by value, and a kernel that rounds a batch's rows differently does so for a quarter or
more of their values (ORT's RNN cell here): a shape and size is trusted once its batches
compared PROOF_VALUES values alike. A batch that differs is not used: its steps run alone,
and so do all the version's steps after it (logged once). A version remembers PROOF_SHAPES
shapes and sizes at most (steps of ever new lengths must not grow it without bound): a
batch of one it could not keep is checked every time.

Nothing is decided for a step in a batch that it would not decide alone. A batch
continue_rows cannot step (a session not live: ended, expired, unknown, its state not
fitting) runs nothing and sends each of its steps back to run alone (`join` resolves to
None), where each gets its own outcome or error. A session's second step in one batch waits
for the next batch, behind the first. A step whose call is cancelled while it waits is left
out of its batch; once the batch has run, its session has gone on, as a step alone does
when its client stops waiting after it ran. ModelStatistics and `rnnserve_batch_size` count
a batch as one run of its rows.

A batch runs in the loop's next turn, or, with `coalesce_max_delay_us`, once that delay has
passed since its first step waited (Triton's max_queue_delay): unary calls reach their
handlers one per turn of the loop (grpc.aio accepts one call at a time), so one turn
gathers few of them, where a few milliseconds gather many. A batch of `batch_max_size` steps
runs at once, and holds no more: the steps beyond wait for the next. Nor does a batch wait
for company that is not coming: it runs as soon as every session of the version's recent
batches has a step in it, the sessions a client steps one after the other coming back
after each answer. A session is expected from its first batch until its sequence ends, or
until it has joined no batch for FORGET_DELAYS delays (at least FORGET_MIN_S): a client that
went away, or that steps less often than that, costs a batch no more than the delay. A few
clients' steps so run as soon as all of them are in; before any batch has run, or with a
session that went quiet, the delay bounds the wait.

Waiting costs a turn of the event loop, or the delay. Where steps come one at a time (a
lone client), batches of one would pay it for nothing: while a version's batches average
fewer than two steps, its steps run at once, and every PROBE_AFTER steps one joins again
to see whether company has come.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable

import numpy as np

from rnnserve.service.repository import LoadedVersion
from rnnserve.service.sessions import SessionKey, SessionManager
from rnnserve.service.sessions.batcher import split_rows
from rnnserve.service.tasks.base import Execute, Prepared, Result, Task, take_rows
from rnnserve.service.types import State

log = logging.getLogger(__name__)

PROBE_AFTER = 256  # steps run at once before one joins again, while batches stay small
SMALL = 2.0  # steps per batch (a moving average) under which steps run at once
WEIGHT = 0.125  # of the newest batch in the moving average
START = 8.0  # the average a version starts with: about 15 lone steps bring it under SMALL
FORGET_DELAYS = 100  # a session that joined no batch for this many delays is not waited for
FORGET_MIN_S = 0.01
PROOF_VALUES = 1024  # a batch shape and size is trusted once this many values compared alike
PROOF_SHAPES = 4096  # shapes and sizes a version remembers; a batch of any other is checked

# A step's row and its sequence's time steps after it; None: run the step alone.
Stepped = tuple[Result, int] | None


class Coalescing:
    """The steps waiting to run together, by model version: each batch waits at most
    `delay_s` (0: the loop's next turn) and holds at most `max_steps`."""

    def __init__(self, sessions: SessionManager, delay_s: float, max_steps: int) -> None:
        self._sessions = sessions
        self._delay_s = delay_s
        self._max_steps = max_steps
        self._pending: dict[tuple[str, str], _Pending] = {}

    def join(
        self, model: LoadedVersion, key: SessionKey, prepared: Prepared
    ) -> asyncio.Future[Stepped] | None:
        """The future of the step's answer within a batch; None when the step runs alone
        now (it cannot join one, or its version's steps come one at a time)."""
        if not self._sessions.continues_rows:
            return None
        shape = model.task.piece_key(prepared)
        if shape is None:
            return None
        # By name and version, holding no model between its batches: an unloaded version's
        # graphs go with it. A version loaded again batches apart from its former self.
        pending = self._pending.get((model.name, model.version))
        if pending is None:
            pending = _Pending(self._sessions, self._delay_s, self._max_steps)
            self._pending[model.name, model.version] = pending
        return pending.join(model, key, (id(model), shape), prepared)

    def ended(self, model: LoadedVersion, key: SessionKey) -> None:
        """The session's sequence ends (its last step runs alone): no batch waits for it."""
        pending = self._pending.get((model.name, model.version))
        if pending is not None:
            pending.ended(key)


class _Step:
    __slots__ = ("future", "key", "model", "prepared", "shape")

    def __init__(
        self, model: LoadedVersion, key: SessionKey, shape: Hashable, prepared: Prepared
    ) -> None:
        self.model = model
        self.key = key
        self.shape = shape  # what the steps of one batch share
        self.prepared = prepared
        self.future: asyncio.Future[Stepped] = asyncio.get_running_loop().create_future()


class _Pending:
    """One version's steps waiting for their batch, and how large its batches are."""

    def __init__(self, sessions: SessionManager, delay_s: float, max_steps: int) -> None:
        self._sessions = sessions
        self._delay_s = delay_s
        self._max_steps = max_steps
        self._full: asyncio.Future[None] | None = None  # resolved when a batch may run
        self._steps: list[_Step] = []
        self._running: set[asyncio.Future[None]] = set()
        self._average = START  # steps per batch
        self._alone = 0  # steps left to run at once
        # With a delay: the sessions of recent batches, by when they last joined one, and
        # those of them with a step waiting for the next.
        self._expected: dict[SessionKey, float] = {}
        self._here: set[SessionKey] = set()
        self._forget_after_s = max(FORGET_MIN_S, FORGET_DELAYS * delay_s)
        # Values each batch shape and size compared alike with its rows run alone, until
        # PROOF_VALUES; whether a batch differed (the version's steps then run alone).
        self._compared: dict[tuple[Hashable, int], int] = {}
        self._differs = False

    def join(
        self, model: LoadedVersion, key: SessionKey, shape: Hashable, prepared: Prepared
    ) -> asyncio.Future[Stepped] | None:
        if self._differs:
            return None
        if self._alone:
            self._alone -= 1
            return None
        step = _Step(model, key, shape, prepared)
        self._wait(step)
        return step.future

    def _wait(self, step: _Step) -> None:
        """`step` waits for the next batch: the first to wait starts the task that runs it,
        whose first step comes after the handlers woken in this turn."""
        if not self._steps:
            flush = asyncio.ensure_future(self._flush())
            self._running.add(flush)  # the loop keeps only a weak reference to a task
            flush.add_done_callback(self._running.discard)
        self._steps.append(step)
        if step.key in self._expected:
            self._here.add(step.key)
        if self._full is not None and self._gathered_now():
            _resolve(self._full)

    def ended(self, key: SessionKey) -> None:
        if self._expected.pop(key, None) is None:
            return
        self._here.discard(key)
        if self._full is not None and self._gathered_now():
            _resolve(self._full)

    def _gathered_now(self) -> bool:
        """Whether the batch may run before its delay: it is full, or every session of the
        recent batches has a step in it."""
        if len(self._steps) >= self._max_steps:
            return True
        return bool(self._expected) and len(self._here) >= len(self._expected)

    async def _gathered(self) -> None:
        """Until the delay has passed since the batch's first step, or it is gathered."""
        if self._gathered_now():
            return
        loop = asyncio.get_running_loop()
        self._full = full = loop.create_future()
        timer = loop.call_later(self._delay_s, _resolve, full)
        try:
            await full
        finally:
            timer.cancel()
            self._full = None

    async def _flush(self) -> None:
        """The steps that joined, one batch per shape, one batch after the other, at most
        `max_steps` in all; a session's second step, and the steps beyond, wait in their
        order for the next batch, behind the first."""
        if self._delay_s:
            await self._gathered()
        steps, self._steps = self._steps, []
        batches: dict[Hashable, list[_Step]] = {}
        keys: set[SessionKey] = set()
        for step in steps:
            if step.future.done():  # its call was cancelled while it waited
                continue
            if step.key in keys or len(keys) == self._max_steps:
                self._wait(step)
                continue
            keys.add(step.key)
            batches.setdefault(step.shape, []).append(step)
        self._average += (len(keys) - self._average) * WEIGHT
        if self._average < SMALL:
            self._alone = PROBE_AFTER
        if self._delay_s:
            self._expect(keys)
        for batch in batches.values():
            await self._run(batch)

    def _expect(self, keys: set[SessionKey]) -> None:
        """The batch's sessions are expected in the next (a second step of one may already
        wait there); those quiet too long are not."""
        now = asyncio.get_running_loop().time()
        for key in keys:
            self._expected[key] = now
        since = now - self._forget_after_s
        quiet = [key for key, joined in self._expected.items() if joined < since]
        for key in quiet:
            del self._expected[key]
        self._here = {step.key for step in self._steps if step.key in self._expected}

    async def _run(self, batch: list[_Step]) -> None:
        model = batch[0].model
        task = model.task
        execute = model.runtime.run_on_loop
        pieces = [step.prepared for step in batch]
        proof = (batch[0].shape, len(batch))
        compared = self._compared.get(proof, 0)

        async def run(state: State) -> tuple[Result, State]:
            stacked.state = state
            result = task.run(stacked, execute)
            if compared < PROOF_VALUES:
                alike = _values_as_alone(task, pieces, state, result, execute)
                if alike is None:
                    raise _Differs
                if proof in self._compared or len(self._compared) < PROOF_SHAPES:
                    self._compared[proof] = self._compared.get(proof, 0) + alike
            return result, result.state(model.spec)

        try:
            stacked = task.stacked(pieces)
            keys = [step.key for step in batch]
            stepped = await self._sessions.continue_rows(keys, stacked.lengths, stacked.state, run)
        except _Differs:  # nothing stored: each step runs alone, as every later one
            if not self._differs:  # another batch, gathered before, may differ too
                self._differs = True
                log.warning(
                    "model %s version %s: a batch of %d steps did not answer as its steps "
                    "alone, bit for bit; its steps run alone from now on",
                    model.name, model.version, len(batch),
                )  # fmt: skip
            _alone(batch)
            return
        except Exception as error:  # what each step's run would have raised alone
            for step in batch:
                if not step.future.done():
                    step.future.set_exception(error)
            return
        if stepped is None:  # a session that is not live: each step says what became of it
            _alone(batch)
            return
        result, counts = stepped
        rows = split_rows(result.outputs, [1] * len(batch), task.batch_axes)
        for row, (step, outputs) in enumerate(zip(batch, rows, strict=True)):
            if not step.future.done():
                step.future.set_result((Result(outputs), int(counts[row])))


def _alone(batch: list[_Step]) -> None:
    """Each step of the batch runs alone, as if it had not joined one."""
    for step in batch:
        if not step.future.done():
            step.future.set_result(None)


class _Differs(Exception):
    """A batch's rows are not what its steps get alone."""


def _values_as_alone(
    task: Task, pieces: list[Prepared], state: State, result: Result, execute: Execute
) -> int | None:
    """The values a batch's result holds for its pieces when each piece, run alone from
    its row of `state` (held rows on axis 1) for every output, states among them, gets them
    bit for bit; None when one does not."""
    rows = split_rows(result.outputs, [1] * len(pieces), task.batch_axes)
    values = 0
    for row, (piece, batched) in enumerate(zip(pieces, rows, strict=True)):
        own = take_rows(state, [row])
        alone = Prepared(1, piece.inputs, own, list(task.output_names), piece.lengths)
        for name, value in task.run(alone, execute).outputs.items():
            other = batched.get(name)
            if other is None or not _identical(value, other):
                return None
            values += value.size
    return values


def _identical(one: np.ndarray, other: np.ndarray) -> bool:
    """Equal in shape, type and every bit (-0.0 is not 0.0; text compares as text)."""
    if one.shape != other.shape or one.dtype != other.dtype:
        return False
    if one.dtype == object:
        return bool(np.array_equal(one, other))
    return one.tobytes() == other.tobytes()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
