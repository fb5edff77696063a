"""A request admitted to run: the model version it runs on, the request as its task sees
it, its sequence (or session rows) and where its model work runs. Every path prepares and
answers it through these methods."""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from rnnserve.service.dataplane.timer import RequestTimer
from rnnserve.service.repository import LoadedVersion
from rnnserve.service.sessions import SequenceParameters, SessionRows
from rnnserve.service.sessions.state import Answer
from rnnserve.service.tasks.base import Prepared, Result
from rnnserve.service.types import InferRequest, InferResponse, Parameter, State


@dataclass(init=False, slots=True)
class Admitted:
    model: LoadedVersion
    request: InferRequest  # without control tensors
    sequence: SequenceParameters
    rows: SessionRows | None  # a multi-session request's rows
    threads: Executor | None  # None: on the event loop

    # __init__ by hand: compiled, a dataclass's generated one runs as Python, at three times
    # the cost; made for every request.
    def __init__(
        self,
        model: LoadedVersion,
        request: InferRequest,
        sequence: SequenceParameters,
        rows: SessionRows | None,
        threads: Executor | None,
    ) -> None:
        self.model = model
        self.request = request
        self.sequence = sequence
        self.rows = rows
        self.threads = threads

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

    def answer_of(self, result: Result | None) -> Answer:
        """What a session keeps of a step's result for a retry: every output but the
        states, which it keeps anyway (the state after the step), each with its batch axis
        first (a view: the session keeps a copy of its row)."""
        if result is None:  # a last piece answered later: its retry is computed again
            return {}
        axes, states = self.model.task.batch_axes, self.model.spec.state_outputs
        return {
            name: np.moveaxis(array, axes.get(name, 0), 0)
            for name, array in result.outputs.items()
            if name not in states
        }

    def replayed(self, answer: Answer, state: State) -> Result:
        """A retried step's result again: its kept answer, and the states from the state
        its session holds, the one the step left."""
        axes = self.model.task.batch_axes
        outputs = {name: np.moveaxis(array, 0, axes.get(name, 0)) for name, array in answer.items()}
        return Result({**outputs, **self.model.task.state_results(state)})

    def state_input(self) -> str | None:
        """The first state input (h0, c0) the request carries, if any: a continuation
        starts from the state the server keeps, never from one the client sends."""
        state_inputs = self.model.spec.state_inputs
        for tensor in self.request.inputs:  # asked by every continuing step: no generator
            if tensor.name in state_inputs:
                return tensor.name
        return None
