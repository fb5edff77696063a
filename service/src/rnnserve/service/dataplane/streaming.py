"""Streamed answers (ModelStreamInfer): each path's answer response by response, as async
generators. They stay interpreted Python: mypyc compiles no async generator, and the data
plane around them, which every unary step runs through, is compiled (service/pyproject.toml).
The paths' `stream` methods return these."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from rnnserve.service.dataplane.admitted import Admitted
from rnnserve.service.dataplane.compute import Compute
from rnnserve.service.dataplane.lifecycle import Lifecycle
from rnnserve.service.dataplane.timer import RequestTimer
from rnnserve.service.tasks.base import Execute, Prepared, Result
from rnnserve.service.types import InferRequest, InferResponse, Parameter

if TYPE_CHECKING:
    from rnnserve.service.dataplane.admission import Admission
    from rnnserve.service.dataplane.rows import RowsPath
    from rnnserve.service.dataplane.sequence import SequencePath


async def stream_infer(
    lifecycle: Lifecycle,
    admission: Admission,
    running: Callable[[Admitted], AbstractContextManager[RequestTimer]],
    request: InferRequest,
) -> AsyncIterator[InferResponse]:
    """DataPlane.stream_infer: admitted and run as `infer` is, answered by its path's
    stream."""
    with lifecycle.request():
        admitted, path = await admission.admit(request)
        with running(admitted) as timer:
            async for response in path.stream(admitted, timer):
                yield response


async def stateless(
    compute: Compute, admitted: Admitted, timer: RequestTimer
) -> AsyncIterator[InferResponse]:
    prepared = await compute.call(admitted.threads, admitted.prepare, timer)
    execute, threads = compute.for_stateless(admitted.model, admitted.threads)
    responses = stream_responses(compute, admitted, prepared, execute, threads, timer)
    async for response in responses:
        yield response


async def sequence(
    path: SequencePath, admitted: Admitted, timer: RequestTimer
) -> AsyncIterator[InferResponse]:
    compute = path.compute
    prepared = await compute.call(admitted.threads, admitted.prepare, timer)
    execute, threads = compute.for_sessions(admitted.model, admitted.threads)
    result, offset = await path.step(admitted, prepared, execute, threads, timer, answer_last=False)
    parameters = path.offset_parameters(offset)
    if result is not None:  # not the last piece: answered already
        with timer.responding():
            yield admitted.response(prepared, result, parameters)
        return
    # The last piece: `prepared` now starts from the session's state, and is answered
    # (decoded, for seq2seq) as any request is, response by response.
    async for response in stream_responses(
        compute, admitted, prepared, execute, threads, timer, parameters
    ):
        yield response


async def rows(
    path: RowsPath, admitted: Admitted, timer: RequestTimer
) -> AsyncIterator[InferResponse]:
    yield await path.answer(admitted, timer)


async def stream_responses(
    compute: Compute,
    admitted: Admitted,
    prepared: Prepared,
    execute: Execute,
    threads: Executor | None,
    timer: RequestTimer,
    parameters: dict[str, Parameter] | None = None,
) -> AsyncIterator[InferResponse]:
    """The task's streamed answer to `prepared`, each response computed in `threads` and
    carrying `parameters`."""
    results = admitted.model.task.stream(prepared, execute)
    while True:
        response = await compute.call(
            threads, _next_response, admitted, prepared, results, timer, parameters
        )
        if response is None:
            return
        yield response


def _next_response(
    admitted: Admitted,
    prepared: Prepared,
    results: Iterator[Result],
    timer: RequestTimer,
    parameters: dict[str, Parameter] | None,
) -> InferResponse | None:
    with timer.computing():
        result = next(results, None)
    if result is None:
        return None
    with timer.responding():
        return admitted.response(prepared, result, parameters, final=result.final)
