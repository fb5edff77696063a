"""A multi-session request: control tensors (`sequence_id`, `sequence_start`,
`sequence_end`, one value per batch row) make each row one step of its own session, all
rows in one run of the batch. A row whose session cannot step fails alone: its outputs are
zeros (empty strings for text), its state stays as it was, and the `sequence_error` output
tells each row's outcome."""

from __future__ import annotations

from collections.abc import AsyncIterator

from rnnserve.service.dataplane.admitted import Admitted
from rnnserve.service.dataplane.compute import Compute
from rnnserve.service.dataplane.timer import RequestTimer
from rnnserve.service.errors import InvalidArgument
from rnnserve.service.model_spec import ModelSpec
from rnnserve.service.sessions import RowStep, SessionKey, SessionManager, SessionRows
from rnnserve.service.sessions.control import FAILED_ROWS, error_tensor
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
        row_steps = [
            RowStep(SessionKey(model.name, model.version, sequence_id), start, end)
            for sequence_id, start, end in zip(rows.ids, rows.starts, rows.ends, strict=True)
        ]

        async def run(state: State) -> tuple[Result, State]:
            prepared.state = state
            result = await self.compute.call(threads, model.task.run, prepared, execute)
            return result, result.state(model.spec)

        with timer.computing():
            result, errors = await self.sessions.step_rows(row_steps, prepared.state, run)
        with timer.responding():
            failed = [row for row, error in enumerate(errors) if error is not None]
            _blank_rows(result, failed, model.spec)
            response = admitted.response(prepared, result, {FAILED_ROWS: len(failed)})
            response.outputs.append(
                error_tensor([error.message if error else "" for error in errors])
            )
        return response

    async def stream(self, admitted: Admitted, timer: RequestTimer) -> AsyncIterator[InferResponse]:
        yield await self.answer(admitted, timer)


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


def _blank_rows(result: Result, rows: list[int], spec: ModelSpec) -> None:
    """Zeros (empty strings for text) in the given rows of every output."""
    axes = spec.batch_axes()
    for name, array in result.outputs.items():
        index = (slice(None),) * axes.get(name, 0) + (rows,)
        array[index] = b"" if array.dtype == object else 0
