"""What every task shares: the shape of one step and the state it carries.

A request becomes a `Step` (validated inputs for one or many rows, plus the state to start
from), a task runs the step with an `Execute` callable that makes the ORT runs, and the
`Result` holds the wire outputs, the final state among them as `hn`/`cn`. States are
`(layers*directions, rows, hidden)`: rows on axis 1. That is the seam stateful sessions
use: take a step's state from a store, run it, put `Result.state` back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence, Sized
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from service.model_spec import ModelSpec
from service.settings import Settings
from service.tasks import validation
from service.types import InferRequest, Parameter, Tensor, TensorMetadata

State = dict[str, np.ndarray]  # stem ("h", "c") -> (layers*directions, rows, hidden)
Execute = Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]  # role, feeds -> outputs


@dataclass
class Step:
    """A validated request, ready for ONNX Runtime."""

    rows: int
    inputs: dict[str, Any]  # task-specific: arrays or per-row token lists
    state: State
    outputs: list[str]  # wire outputs to return
    text_shape: tuple[int, ...] = ()  # the text input's shape, which text_out mirrors
    options: dict[str, Any] = field(default_factory=dict)  # validated request parameters


@dataclass
class Result:
    outputs: dict[str, np.ndarray]  # wire name -> array (text as an object array of bytes)
    final: bool = True  # streaming: the last response of the request

    @property
    def state(self) -> State:
        return {stem: self.outputs[f"{stem}n"] for stem in ("h", "c") if f"{stem}n" in self.outputs}


class Task(ABC):
    """One task's wire tensors and how a request for them runs on the task's graphs."""

    # Whether each batch row may be one step of its own session (multi-session requests):
    # true for tasks whose every piece answers as `run` does, from the state it starts with.
    session_rows = True

    def __init__(self, spec: ModelSpec, settings: Settings) -> None:
        self.spec = spec
        self.settings = settings

    # Subclasses compute their tensor metadata once (a cached_property): the model's spec
    # never changes, and every request reads it.
    @property
    @abstractmethod
    def inputs(self) -> list[TensorMetadata]: ...

    @property
    @abstractmethod
    def outputs(self) -> list[TensorMetadata]: ...

    @cached_property
    def input_names(self) -> list[str]:
        return [meta.name for meta in self.inputs]

    @cached_property
    def output_names(self) -> list[str]:
        return [meta.name for meta in self.outputs]

    @cached_property
    def _output_datatypes(self) -> dict[str, str]:
        return {meta.name: meta.datatype for meta in self.outputs}

    @abstractmethod
    def prepare(self, request: InferRequest) -> Step:
        """Validate the request completely; nothing unchecked may reach ORT."""

    @abstractmethod
    def run(self, step: Step, execute: Execute) -> Result:
        """The whole answer to a step (runs in a compute thread)."""

    def stream(self, step: Step, execute: Execute) -> Iterator[Result]:
        """The answer as a series of responses; one unless the task decodes token by token."""
        yield self.run(step, execute)

    def session_piece(self, step: Step, execute: Execute) -> tuple[Result, State]:
        """A piece of a session's sequence that is not its last, run from `step.state`: its
        answer and the state to carry to the next piece. Most tasks answer each piece as
        `run` does; a task that answers only once it has the whole input overrides this."""
        result = self.run(step, execute)
        return result, result.state

    def parameters(self) -> dict[str, Parameter]:
        """Task facts for ModelMetadata parameters."""
        return {}

    # State helpers shared by the tasks that expose it.

    def state_metadata(self, suffix: str, optional: bool) -> list[TensorMetadata]:
        shape = (self.spec.state_rows, -1, self.spec.hidden_size)
        return [
            TensorMetadata(f"{stem}{suffix}", "FP32", shape, optional=optional)
            for stem in self.spec.state_names
        ]

    def zero_state(self, rows: int) -> State:
        shape = (self.spec.state_rows, rows, self.spec.hidden_size)
        return {stem: np.zeros(shape, np.float32) for stem in self.spec.state_names}

    def initial_state(self, inputs: dict[str, Tensor], rows: int) -> State:
        """The state the client sent (`h0`, `c0`), zeros for any it left out."""
        state = self.zero_state(rows)
        for stem in state:
            tensor = inputs.get(f"{stem}0")
            if tensor is not None:
                state[stem] = validation.state_array(
                    tensor, self.spec.state_rows, rows, self.spec.hidden_size
                )
        return state

    @cached_property
    def state_output_names(self) -> list[str]:
        return [f"{stem}n" for stem in self.spec.state_names]

    def state_feeds(self, state: State) -> dict[str, np.ndarray]:
        return {f"{stem}0": value for stem, value in state.items()}

    def state_outputs(self, graph_outputs: dict[str, np.ndarray]) -> State:
        return {stem: graph_outputs[f"{stem}n"] for stem in self.spec.state_names}

    def respond(self, step: Step, result: Result) -> list[Tensor]:
        """The requested outputs as wire tensors."""
        datatypes = self._output_datatypes
        tensors = []
        for name in step.outputs:
            data = result.outputs[name]
            if datatypes[name] == "BYTES":
                data = data.reshape(step.text_shape)
            tensors.append(Tensor(name, datatypes[name], tuple(data.shape), data))
        return tensors


def take_rows(state: State, rows: Sequence[int]) -> State:
    return {stem: np.ascontiguousarray(value[:, rows]) for stem, value in state.items()}


def put_rows(target: State, rows: Sequence[int], source: State) -> None:
    for stem, value in source.items():
        target[stem][:, rows] = value


def text_array(texts: Sequence[str]) -> np.ndarray:
    """Strings as the object array of UTF-8 bytes a BYTES tensor holds."""
    array = np.empty(len(texts), dtype=object)
    array[:] = [text.encode("utf-8") for text in texts]
    return array


def rows_by_length(token_rows: Sequence[Sized]) -> dict[int, list[int]]:
    """Row indices grouped by sequence length (of tokens or of text): rows of one length
    share one ORT run, never padded."""
    groups: dict[int, list[int]] = {}
    for index, tokens in enumerate(token_rows):
        groups.setdefault(len(tokens), []).append(index)
    return groups
