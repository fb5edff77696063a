"""Any recurrent graph: a user's own RNN, LSTM, GRU or custom module, served by the names,
datatypes and shapes of its own tensors.

The spec (model/spec.py: `data_inputs`, `data_outputs`, `state_tensors`; written
by `rnnserve import` or read off the graph at load, model/describe.py) says where each
tensor has its batch and its sequence. A request sends the data inputs, optionally a state
to start from in the graph's own layout; the answer is every output the graph returns, or
those requested. States are carried between the requests of a sequence exactly as the
default models' `h0` -> `hn` are. One ORT run per request.
"""

from __future__ import annotations

import math

import numpy as np

from rnnserve.model.spec import ModelSpec, TensorSpec
from rnnserve.service.errors import InvalidArgument
from rnnserve.service.tasks import validation
from rnnserve.service.tasks.base import Execute, Prepared, Result, Task
from rnnserve.service.types import InferRequest, Tensor, TensorMetadata

ROLE = "model"


class RecurrentTask(Task):
    name = "recurrent"
    graph_roles = frozenset({ROLE})

    @classmethod
    def check_needs(cls, spec: ModelSpec) -> None:
        if spec.data_inputs is None or spec.data_outputs is None or spec.state_tensors is None:
            raise ValueError(f"task {cls.name} needs data_inputs, data_outputs and state_tensors")
        for kind, data, states, graph in (
            ("inputs", spec.data_inputs, spec.state_inputs, spec.graph_inputs[ROLE]),
            ("outputs", spec.data_outputs, spec.state_outputs, spec.graph_outputs[ROLE]),
        ):
            described = sorted([*(t.name for t in data), *states])
            if described != sorted(graph):
                raise ValueError(f"the spec describes {kind} {described}; the graph has {graph}")

    @property
    def input_specs(self) -> list[TensorSpec]:
        assert self.spec.data_inputs is not None  # check_spec guarantees it
        return self.spec.data_inputs

    @property
    def output_specs(self) -> list[TensorSpec]:
        assert self.spec.data_outputs is not None  # check_spec guarantees it
        return self.spec.data_outputs

    def input_metadata(self) -> list[TensorMetadata]:
        data = [TensorMetadata(t.name, t.datatype, t.shape) for t in self.input_specs]
        return [*data, *self.state_metadata(outputs=False, optional=True)]

    def output_metadata(self) -> list[TensorMetadata]:
        data = [TensorMetadata(t.name, t.datatype, t.shape) for t in self.output_specs]
        return [*data, *self.state_metadata(outputs=True, optional=True)]

    def prepare(self, request: InferRequest) -> Prepared:
        required = [tensor.name for tensor in self.input_specs]
        inputs = validation.check_input_names(request, self.input_names, required)
        arrays: dict[str, np.ndarray] = {}
        rows = length = None
        for spec in self.input_specs:
            array = _data_array(inputs[spec.name], spec)
            validation.check_batch(spec.name, array.shape[spec.batch_axis], self.settings)
            rows = _agree(spec, "batch size", spec.batch_axis, array, rows)
            if spec.sequence_axis is not None:
                steps = array.shape[spec.sequence_axis]
                validation.check_sequence(spec.name, steps, self.settings)
                length = _agree(spec, "sequence length", spec.sequence_axis, array, length)
            arrays[spec.name] = array
        assert rows is not None  # a graph has at least one data input (check_spec)
        outputs = validation.check_output_names(request, self.output_names, self.output_names)
        # A graph without a sequence axis steps once per request.
        lengths = [1 if length is None else length] * rows
        return Prepared(rows, arrays, self.initial_state(inputs, rows), outputs, lengths)

    def rows_and_steps(self, request: InferRequest) -> tuple[int, int]:
        rows = steps = 0
        shapes = {tensor.name: tuple(tensor.shape) for tensor in request.inputs}
        for spec in self.input_specs:
            shape = shapes.get(spec.name, ())
            if spec.batch_axis < len(shape):
                rows = max(rows, int(shape[spec.batch_axis]))
            if spec.sequence_axis is not None and spec.sequence_axis < len(shape):
                steps = max(steps, int(shape[spec.sequence_axis]))
        return rows, max(steps, 1)  # a graph without a sequence axis steps once

    def output_elements(self, request: InferRequest, rows: int, steps: int) -> int:
        """Each output's shape, its batch and sequence axes sized as the request's (other
        dynamic dimensions as 1: what they hold is the graph's own)."""
        total = 0
        for spec in self.output_specs:
            sizes = [
                rows if axis == spec.batch_axis
                else steps if axis == spec.sequence_axis
                else max(size, 1)
                for axis, size in enumerate(spec.shape)
            ]  # fmt: skip
            total += math.prod(sizes)
        return total

    def run(self, prepared: Prepared, execute: Execute) -> Result:
        states = {s.input: s.fed(prepared.state[s.input]) for s in self.spec.states}
        graph = execute(ROLE, {**prepared.inputs, **states})
        return Result({name: graph[name] for name in self.output_names})


def _data_array(tensor: Tensor, spec: TensorSpec) -> np.ndarray:
    """A data input of the spec's datatype and rank, its fixed dimensions as the graph has
    them and every dimension at least 1 (ORT aborts on some empty ones), its ids within
    the embedding it indexes, where the spec knows one."""
    array = validation.numeric_array(tensor, spec.datatype, len(spec.shape))
    for axis, (size, expected) in enumerate(zip(array.shape, spec.shape, strict=True)):
        if expected != -1:
            validation.check_dim(spec.name, f"axis {axis} of size", size, expected)
        elif size < 1 and axis not in (spec.batch_axis, spec.sequence_axis):
            raise InvalidArgument(
                f"input '{spec.name}' has size {size} on axis {axis}; expected at least 1"
            )
    validation.check_finite(spec.name, array)
    if spec.embedding_rows is not None:
        validation.check_ids(spec.name, array, spec.embedding_rows)
    return array


def _agree(spec: TensorSpec, what: str, axis: int, array: np.ndarray, seen: int | None) -> int:
    """The size on `axis`, which every data input must share."""
    size = int(array.shape[axis])
    if seen is not None and size != seen:
        raise InvalidArgument(
            f"input '{spec.name}' has {what} {size} (axis {axis}); expected {seen}, as the "
            "other inputs have"
        )
    return size
