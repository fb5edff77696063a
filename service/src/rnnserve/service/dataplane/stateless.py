"""A request outside any session: its state comes with it (or starts at zeros) and
nothing is kept. Unary requests are answered in one piece of model work; streamed ones
response by response (seq2seq: one per decoded token; streaming.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from rnnserve.service.dataplane import streaming
from rnnserve.service.dataplane.admitted import Admitted
from rnnserve.service.dataplane.compute import Compute
from rnnserve.service.dataplane.timer import RequestTimer
from rnnserve.service.tasks.base import Execute
from rnnserve.service.types import InferResponse


class StatelessPath:
    def __init__(self, compute: Compute) -> None:
        self.compute = compute

    async def answer(self, admitted: Admitted, timer: RequestTimer) -> InferResponse:
        execute, threads = self.compute.for_stateless(admitted.model, admitted.threads)
        return await self.compute.call(threads, self._answer, admitted, timer, execute)

    @staticmethod
    def _answer(admitted: Admitted, timer: RequestTimer, execute: Execute) -> InferResponse:
        """Validated before any batching: a request its task refuses never joins a batch."""
        prepared = admitted.prepare(timer)
        with timer.computing():
            result = admitted.model.task.run(prepared, execute)
        with timer.responding():
            return admitted.response(prepared, result)

    def stream(self, admitted: Admitted, timer: RequestTimer) -> AsyncIterator[InferResponse]:
        return streaming.stateless(self.compute, admitted, timer)
