"""One request of one sequence (Triton's sequence parameters `sequence_id`,
`sequence_start`, `sequence_end`, and `sequence_offset`): the piece runs from the state its
session carries, in the session's turn, and leaves the new state for the next piece, so
that a sequence sent piece by piece gives the answers of the whole sequence sent at once.
Every response carries `sequence_offset`, the time steps the sequence has consumed; a retry
of the last piece is answered again, not applied again (sessions/accounting.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import Executor

from rnnserve.protocol.sequences import SEQUENCE_OFFSET
from rnnserve.service.dataplane import streaming
from rnnserve.service.dataplane.admitted import Admitted
from rnnserve.service.dataplane.coalescing import Coalescing
from rnnserve.service.dataplane.compute import Compute
from rnnserve.service.dataplane.timer import RequestTimer
from rnnserve.service.errors import InvalidArgument
from rnnserve.service.sessions import RowStep, SessionKey, SessionManager
from rnnserve.service.sessions.accounting import request_digest
from rnnserve.service.tasks.base import Execute, Prepared, Result
from rnnserve.service.types import InferResponse, Parameter, State


class SequencePath:
    def __init__(self, sessions: SessionManager, compute: Compute) -> None:
        self.sessions = sessions
        self.compute = compute
        settings = compute.settings
        self.coalescing = Coalescing(
            sessions, settings.coalesce_max_delay_us / 1e6, settings.batch_max_size
        )

    async def answer(self, admitted: Admitted, timer: RequestTimer) -> InferResponse:
        prepared = await self.compute.call(admitted.threads, admitted.prepare, timer)
        execute, threads = self.compute.for_sessions(admitted.model, admitted.threads)
        result, offset = await self.step(
            admitted, prepared, execute, threads, timer, answer_last=True
        )
        assert result is not None  # a unary piece is always answered in the session
        with timer.responding():
            return admitted.response(prepared, result, self.offset_parameters(offset))

    def stream(self, admitted: Admitted, timer: RequestTimer) -> AsyncIterator[InferResponse]:
        return streaming.sequence(self, admitted, timer)

    @staticmethod
    def offset_parameters(offset: int) -> dict[str, Parameter]:
        """A sequence response's parameters: the time steps its sequence consumed."""
        return {SEQUENCE_OFFSET: offset}

    async def step(
        self, admitted: Admitted, prepared: Prepared, execute: Execute,
        threads: Executor | None, timer: RequestTimer, *, answer_last: bool,
    ) -> tuple[Result | None, int]:  # fmt: skip
        """Runs the piece from the state its session carries, in the session's turn.

        Returns the piece's answer and the sequence's time steps after it; for the last
        piece with `answer_last` false, the answer is None with `prepared.state` set to the
        session's state (already freed), for the caller to answer response by response
        outside the session's turn. A retry is answered with the kept answer, or, for the
        last piece, computed again from the state it started from.
        """
        _check(admitted, prepared)
        task, sequence, request = admitted.model.task, admitted.sequence, admitted.request
        key = SessionKey(
            request.principal, admitted.model.name, admitted.model.version, sequence.sequence_id
        )
        if not (sequence.start or sequence.end) and sequence.offset is None:
            stepped = await self._together(admitted, key, prepared, threads, timer)
            if stepped is not None:
                return stepped
        elif sequence.end:
            self.coalescing.ended(admitted.model, key)
        digest = b""
        if sequence.offset is not None:
            digest = request_digest(request.inputs, sequence.start, sequence.end)
        row = RowStep(
            key, sequence.start, sequence.end, sequence.offset, prepared.lengths[0], digest
        )

        async def run(state: State) -> tuple[Result | None, State]:
            prepared.state = state
            if not sequence.end:
                return await self.compute.call(threads, task.session_piece, prepared, execute)
            if not answer_last:
                return None, state
            result = await self.compute.call(threads, task.run, prepared, execute)
            return result, result.state(task.spec)

        with timer.computing():
            result, outcome = await self.sessions.step(row, prepared.state, run, admitted.answer_of)
        if outcome.answer is not None:  # a retry of the last piece: its answer again
            result = admitted.replayed(outcome.answer, prepared.state)
        return result, outcome.offset

    async def _together(
        self,
        admitted: Admitted,
        key: SessionKey,
        prepared: Prepared,
        threads: Executor | None,
        timer: RequestTimer,
    ) -> tuple[Result, int] | None:
        """A continuation without an offset, stepped with those of other sessions that
        arrived with it (coalescing.py); None when it is to run alone."""
        if not self.compute.coalesces(threads):
            return None
        waiting = self.coalescing.join(admitted.model, key, prepared)
        if waiting is None:
            return None
        with timer.computing():
            return await waiting


def _check(admitted: Admitted, prepared: Prepared) -> None:
    sequence_id = admitted.sequence.sequence_id
    if prepared.rows != 1:
        raise InvalidArgument(
            f"a sequence request (sequence_id {sequence_id!r}) has batch size "
            f"{prepared.rows}; expected 1: a session carries the state of one sequence"
        )
    state_input = None if admitted.sequence.start else admitted.state_input()
    if state_input is not None:
        raise InvalidArgument(
            f"input '{state_input}' is accepted only with sequence_start=true: a "
            f"continuation of sequence {sequence_id!r} starts from the state "
            "the server keeps; to resume from a state of your own, start again with it"
        )
