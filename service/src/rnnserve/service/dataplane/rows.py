"""A multi-session request: control tensors (`sequence_id`, `sequence_start`,
`sequence_end`, `sequence_offset`, one value per batch row) make each row one step of its
own session, all rows in one run of the batch. A row whose session cannot step fails alone:
its outputs are zeros (empty strings for text), its state stays as it was, and the
`sequence_error` output tells each row's outcome; `sequence_offset` gives each row's
sequence's time steps after the request. A row that retries its session's last step gets
that step's kept answer in its outputs and is not applied again."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np

from rnnserve.model.spec import ModelSpec
from rnnserve.service.dataplane import streaming
from rnnserve.service.dataplane.admitted import Admitted
from rnnserve.service.dataplane.compute import Compute
from rnnserve.service.dataplane.timer import RequestTimer
from rnnserve.service.errors import InvalidArgument
from rnnserve.service.sessions import RowStep, SessionKey, SessionManager, SessionRows
from rnnserve.service.sessions.accounting import row_digest
from rnnserve.service.sessions.control import FAILED_ROWS, control_outputs
from rnnserve.service.sessions.manager import Computation
from rnnserve.service.sessions.state import Answer, session_keys
from rnnserve.service.tasks.base import Prepared, Result
from rnnserve.service.types import InferResponse, State


class RowsPath:
    def __init__(self, sessions: SessionManager, compute: Compute) -> None:
        self.sessions = sessions
        self.compute = compute

    async def answer(self, admitted: Admitted, timer: RequestTimer) -> InferResponse:
        assert admitted.rows is not None  # the data plane sends only such requests here
        model, rows = admitted.model, admitted.rows
        prepared = await self.compute.call(admitted.threads, admitted.prepare, timer)
        execute, threads = self.compute.for_sessions(model, admitted.threads)
        _check(admitted, rows, prepared)
        keys = _keys(admitted, rows)

        async def run(state: State) -> tuple[Result, State]:
            prepared.state = state
            result = await self.compute.call(threads, model.task.run, prepared, execute)
            return result, result.state(model.spec)

        if rows.continuing:  # most requests of a steady stream: every row goes on
            continued = await self._continue(admitted, prepared, keys, run, timer)
            if continued is not None:
                return continued
        return await self._step(admitted, rows, prepared, keys, run, timer)

    async def _continue(
        self,
        admitted: Admitted,
        prepared: Prepared,
        keys: list[SessionKey],
        run: Computation[Result],
        timer: RequestTimer,
    ) -> InferResponse | None:
        """The answer when every row's session is live (continue_rows): every row stepped,
        its outputs as run gave them; None when one is not, having run nothing."""
        with timer.computing():
            continued = await self.sessions.continue_rows(
                keys, prepared.lengths, prepared.state, run
            )
        if continued is None:
            return None
        result, counts = continued
        with timer.responding():
            response = admitted.response(prepared, result, {FAILED_ROWS: 0})
            response.outputs += control_outputs(None, counts)
        return response

    async def _step(
        self,
        admitted: Admitted,
        rows: SessionRows,
        prepared: Prepared,
        keys: list[SessionKey],
        run: Computation[Result],
        timer: RequestTimer,
    ) -> InferResponse:
        """The answer of step_rows: each row stepped, retried or failed alone."""
        spec = admitted.model.spec
        with timer.computing():
            result, outcomes = await self.sessions.step_rows(
                _row_steps(admitted, rows, prepared, keys),
                prepared.state,
                run,
                admitted.answer_of,
            )
        assert result is not None  # every row runs in a multi-session request
        with timer.responding():
            failed = [row for row, outcome in enumerate(outcomes) if outcome.error is not None]
            if failed:
                _blank_rows(result, failed, spec)
            for row, outcome in enumerate(outcomes):
                if outcome.answer is not None:  # a retry: its kept answer again
                    _put_row(result, row, outcome.answer, prepared.state, spec)
            response = admitted.response(prepared, result, {FAILED_ROWS: len(failed)})
            response.outputs += control_outputs(
                [outcome.error.message if outcome.error else "" for outcome in outcomes],
                [outcome.offset for outcome in outcomes],
            )
        return response

    def stream(self, admitted: Admitted, timer: RequestTimer) -> AsyncIterator[InferResponse]:
        return streaming.rows(self, admitted, timer)


def _check(admitted: Admitted, rows: SessionRows, prepared: Prepared) -> None:
    if rows.rows != prepared.rows:
        raise InvalidArgument(
            f"input 'sequence_id' has {rows.rows} rows; expected {prepared.rows}, one per "
            "row of the batch"
        )
    state_input = None if all(rows.starts) else admitted.state_input()
    if state_input is not None:
        raise InvalidArgument(
            f"input '{state_input}' is accepted only when every row has "
            "sequence_start=true: the other rows continue from the state the server "
            "keeps; send the rows that resume from a state of your own in a request "
            "of their own"
        )


def _keys(admitted: Admitted, rows: SessionRows) -> list[SessionKey]:
    """Each row's session."""
    model = admitted.model
    return session_keys(admitted.request.principal, model.name, model.version, rows.ids)


def _row_steps(
    admitted: Admitted, rows: SessionRows, prepared: Prepared, keys: list[SessionKey]
) -> list[RowStep]:
    """Each row's step; with offsets, each with the digest of its row of the inputs."""
    inputs = admitted.request.inputs
    offsets = rows.offsets if rows.offsets is not None else [None] * rows.rows
    axes = admitted.model.task.batch_axes if rows.offsets is not None else {}
    return [
        RowStep(
            key,
            start,
            end,
            offset,
            length,
            b"" if offset is None else row_digest(inputs, axes, row, start, end),
        )
        for row, (key, start, end, offset, length) in enumerate(
            zip(keys, rows.starts, rows.ends, offsets, prepared.lengths, strict=True)
        )
    ]


def _put_row(result: Result, row: int, answer: Answer, state: State, spec: ModelSpec) -> None:
    """A retried row's outputs: its kept answer, and the state its session holds (the one
    the retried step left, loaded into `state`). An answer is copied as far as the shapes
    overlap: past a row's own length both hold padding, which may extend further in one
    batch than in another."""
    axes = spec.batch_axes()
    for name, kept in answer.items():  # kept with its batch axis first
        target = np.moveaxis(result.outputs[name], axes.get(name, 0), 0)[row : row + 1]
        overlap = tuple(slice(0, min(a, b)) for a, b in zip(target.shape, kept.shape, strict=True))
        target[overlap] = kept[overlap]
    for pair in spec.states:
        if pair.output in result.outputs:
            target = np.moveaxis(result.outputs[pair.output], pair.batch_axis, 0)
            held = pair.fed(state[pair.input][:, row : row + 1])
            target[row : row + 1] = np.moveaxis(held, pair.batch_axis, 0)


def _blank_rows(result: Result, rows: list[int], spec: ModelSpec) -> None:
    """Zeros (empty strings for text) in the given rows of every output."""
    axes = spec.batch_axes()
    for name, array in result.outputs.items():
        index = (slice(None),) * axes.get(name, 0) + (rows,)
        array[index] = b"" if array.dtype == object else 0
