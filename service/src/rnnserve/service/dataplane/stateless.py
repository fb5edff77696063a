"""A request outside any session: its state comes with it (or starts at zeros) and
nothing is kept. Unary requests are answered in one piece of model work; streamed ones
response by response (seq2seq: one per decoded token)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Executor

from rnnserve.service.dataplane.admitted import Admitted
from rnnserve.service.dataplane.compute import Compute
from rnnserve.service.dataplane.timer import RequestTimer
from rnnserve.service.tasks.base import Execute, Prepared, Result
from rnnserve.service.types import InferResponse, Parameter


class StatelessPath:
    def __init__(self, compute: Compute) -> None:
        self.compute = compute

    async def answer(self, admitted: Admitted, timer: RequestTimer) -> InferResponse:
        return await self.compute.call(admitted.threads, self._answer, admitted, timer)

    @staticmethod
    def _answer(admitted: Admitted, timer: RequestTimer) -> InferResponse:
        prepared = admitted.prepare(timer)
        with timer.computing():
            result = admitted.model.task.run(prepared, admitted.model.runtime.run)
        with timer.responding():
            return admitted.response(prepared, result)

    async def stream(self, admitted: Admitted, timer: RequestTimer) -> AsyncIterator[InferResponse]:
        prepared = await self.compute.call(admitted.threads, admitted.prepare, timer)
        responses = stream_responses(
            self.compute, admitted, prepared, admitted.model.runtime.run, admitted.threads, timer
        )
        async for response in responses:
            yield response


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
