"""A request admitted to run: the model version it runs on, the request as its task sees
it, its sequence (or session rows) and where its model work runs. Every path prepares and
answers it through these methods."""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass

from rnnserve.service.dataplane.timer import RequestTimer
from rnnserve.service.repository import LoadedVersion
from rnnserve.service.sessions import SequenceParameters, SessionRows
from rnnserve.service.tasks.base import Prepared, Result
from rnnserve.service.types import InferRequest, InferResponse, Parameter


@dataclass(slots=True)
class Admitted:
    model: LoadedVersion
    request: InferRequest  # without control tensors
    sequence: SequenceParameters
    rows: SessionRows | None  # a multi-session request's rows
    threads: Executor | None  # None: on the event loop

    def prepare(self, timer: RequestTimer) -> Prepared:
        """The request validated by its task (in `threads`): nothing unchecked reaches ORT."""
        timer.started()
        prepared = self.model.task.prepare(self.request)
        timer.prepared(prepared.rows)
        return prepared

    def response(
        self,
        prepared: Prepared,
        result: Result,
        parameters: dict[str, Parameter] | None = None,
        final: bool = True,
    ) -> InferResponse:
        return InferResponse(
            model_name=self.model.name,
            model_version=self.model.version,
            id=self.request.id,
            outputs=self.model.task.respond(prepared, result),
            parameters=parameters or {},
            final=final,
        )

    def state_input(self) -> str | None:
        """The first state input (h0, c0) the request carries, if any: a continuation
        starts from the state the server keeps, never from one the client sends."""
        state_inputs = self.model.spec.state_inputs
        return next((t.name for t in self.request.inputs if t.name in state_inputs), None)
