"""Regression on sequences of numbers: `x` FP32 [batch, seq, features] -> `y`, one ORT run."""

from __future__ import annotations

from rnnserve.model.spec import ModelSpec
from rnnserve.service.settings import Settings
from rnnserve.service.tasks import validation
from rnnserve.service.tasks.base import Execute, Prepared, Result, Task
from rnnserve.service.tasks.footprint import dims
from rnnserve.service.types import InferRequest, TensorMetadata


class SineTask(Task):
    name = "sine"
    graph_roles = frozenset({"model"})
    graph_tensors = (("model", ("x",), ("y",)),)

    def __init__(self, spec: ModelSpec, settings: Settings) -> None:
        # Features per step of `x` and of `y`, which a sine spec states.
        input_size, output_size = spec.input_size, spec.output_size
        assert input_size is not None and output_size is not None  # the exporter writes them
        self.feature_sizes = input_size, output_size
        self.result_names = ["y", *spec.state_outputs]  # what a run returns, named once
        super().__init__(spec, settings)

    def input_metadata(self) -> list[TensorMetadata]:
        x = TensorMetadata("x", "FP32", (-1, -1, self.feature_sizes[0]))
        return [x, *self.state_metadata(outputs=False, optional=True)]

    def output_metadata(self) -> list[TensorMetadata]:
        y = TensorMetadata("y", "FP32", (-1, -1, self.feature_sizes[1]))
        return [y, *self.state_metadata(outputs=True, optional=True)]

    def prepare(self, request: InferRequest) -> Prepared:
        inputs = validation.check_input_names(request, self.input_names, required=["x"])
        x = validation.numeric_array(inputs["x"], "FP32", 3)
        batch, length, features = x.shape
        validation.check_batch("x", batch, self.settings)
        validation.check_sequence("x", length, self.settings)
        validation.check_dim("x", "feature size (last dimension)", features, self.feature_sizes[0])
        validation.check_finite("x", x)
        outputs = validation.check_output_names(request, self.output_names, self.output_names)
        state = self.initial_state(inputs, batch)
        return Prepared(batch, {"x": x}, state, outputs, [length] * batch)

    def rows_and_steps(self, request: InferRequest) -> tuple[int, int]:
        rows, steps = dims(request, "x", 0, 1)
        return rows, steps

    def output_elements(self, request: InferRequest, rows: int, steps: int) -> int:
        return rows * steps * self.feature_sizes[1]

    def run(self, prepared: Prepared, execute: Execute) -> Result:
        graph = execute("model", {"x": prepared.inputs["x"], **prepared.state})
        return Result({name: graph[name] for name in self.result_names})
