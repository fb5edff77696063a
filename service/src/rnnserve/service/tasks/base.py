"""What every task shares: a request prepared for ONNX Runtime, the result of running it,
and the registry every task joins by subclassing `Task`.

A request becomes a `Prepared` (validated inputs for one or many rows, plus the state to
start from), a task runs it with an `Execute` callable that makes the ORT runs, and the
`Result` holds the wire outputs, the final state among them (`hn`, `cn`). States are held
as `(before, rows, after)` arrays, rows on axis 1, keyed by state input name (for the
default models the graph's own `(layers*directions, rows, hidden)`; see
model/spec.py): that is the seam stateful sessions use: take a prepared request's
state from a store, run it, put `Result.state(spec)` back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from rnnserve.model.spec import ModelSpec
from rnnserve.service.device import as_host
from rnnserve.service.settings import Settings
from rnnserve.service.tasks import validation
from rnnserve.service.tasks.footprint import Footprint, input_elements
from rnnserve.service.types import (
    InferRequest,
    Parameter,
    State,
    Tensor,
    TensorMetadata,
    request_bytes,
)

Execute = Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]  # role, feeds -> outputs

# Gates an ONNX RNN kernel computes per hidden unit (an unknown cell counts as an LSTM's).
GATES = {"rnn": 1, "gru": 3, "lstm": 4}

# Every task class, by the name a ModelSpec's `task` field gives (filled by subclassing).
TASKS: dict[str, type[Task]] = {}


@dataclass(init=False)
class Prepared:
    """A validated request, ready for ONNX Runtime."""

    rows: int
    inputs: dict[str, Any]  # task-specific: arrays or per-row token lists
    state: State
    outputs: list[str]  # wire outputs to return
    lengths: list[int]  # time steps of each row: what a session's step consumes
    text_shape: tuple[int, ...]  # the text input's shape, which text_out mirrors
    options: dict[str, Any]  # validated request parameters

    # __init__ by hand: compiled, a dataclass's generated one runs as Python, at three times
    # the cost; made for every request.
    def __init__(
        self,
        rows: int,
        inputs: dict[str, Any],
        state: State,
        outputs: list[str],
        lengths: list[int],
        text_shape: tuple[int, ...] = (),
        options: dict[str, Any] | None = None,
    ) -> None:
        self.rows = rows
        self.inputs = inputs
        self.state = state
        self.outputs = outputs
        self.lengths = lengths
        self.text_shape = text_shape
        self.options = {} if options is None else options


@dataclass(init=False)
class Result:
    outputs: dict[str, np.ndarray]  # wire name -> array (text as an object array of bytes)
    final: bool  # streaming: the last response of the request

    # __init__ by hand: compiled, a dataclass's generated one runs as Python, at three times
    # the cost; made for every request.
    def __init__(self, outputs: dict[str, np.ndarray], final: bool = True) -> None:
        self.outputs = outputs
        self.final = final

    def state(self, spec: ModelSpec) -> State:
        """The state this result leaves, keyed by the inputs that carry it on; none where
        the outputs hold no state (seq2seq's translation)."""
        return {
            state.input: state.held(self.outputs[state.output])
            for state in spec.states
            if state.output in self.outputs
        }


class Task(ABC):
    """One task's wire tensors and how a request for them runs on the task's graphs.

    A subclass names its task (`name`, the ModelSpec's `task`) and the graph roles its
    spec must have; defining it registers it in TASKS.
    """

    name: ClassVar[str]
    graph_roles: ClassVar[frozenset[str]]
    # (graph role, the names its data inputs must have, those of its data outputs), states
    # following them: a task reads its graphs' tensors by these names.
    graph_tensors: ClassVar[tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...]] = ()
    # Whether each batch row may be one step of its own session (multi-session requests):
    # true for tasks whose every piece answers as `run` does, from the state it starts with.
    session_rows: ClassVar[bool] = True
    # Whether `stream` may answer a request in several responses (one per decoded token):
    # a stream sends the other tasks' single answer as a unary call would get it.
    streams_tokens: ClassVar[bool] = False
    # The request parameters the task reads (beyond the sequence parameters every task has).
    request_parameters: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        TASKS[cls.name] = cls

    def __init__(self, spec: ModelSpec, settings: Settings) -> None:
        self.spec = spec
        self.settings = settings
        # The model's tensors, described once: its spec never changes, and every request
        # reads them. (Attributes, not cached properties: compiled code, which calls a
        # property's getter directly, would compute a cached property on every read.)
        self.inputs = self.input_metadata()
        self.outputs = self.output_metadata()
        self.input_names = [meta.name for meta in self.inputs]
        self.output_names = [meta.name for meta in self.outputs]
        # The inputs and outputs that are not states: what every request of the model
        # carries, and what metadata lists.
        self.data_inputs = [meta for meta in self.inputs if meta.name not in spec.state_inputs]
        self.data_outputs = [meta for meta in self.outputs if meta.name not in spec.state_outputs]
        self.output_datatypes = {meta.name: meta.datatype for meta in self.outputs}
        self.step_elements = step_elements(spec)
        self.batch_axes = spec.batch_axes()  # where every tensor has its batch (0 if unlisted)

    @classmethod
    def check_spec(cls, spec: ModelSpec) -> None:
        """Raises ValueError when the spec lacks what this task needs: the graphs and
        tensors it reads, then what `check_needs` asks."""
        if set(spec.graphs) != cls.graph_roles:
            raise ValueError(f"task {cls.name} needs graphs {sorted(cls.graph_roles)}")
        for role, inputs, outputs in cls.graph_tensors:
            for kind, expected, named in (
                ("inputs", [*inputs, *spec.state_inputs], spec.graph_inputs[role]),
                ("outputs", [*outputs, *spec.state_outputs], spec.graph_outputs[role]),
            ):
                if named != expected:
                    raise ValueError(
                        f"task {cls.name} reads graph '{role}' {kind} {expected}; this one has "
                        f"{named}: a graph with tensors of its own names is served by the "
                        "recurrent task (rnnserve import, or no rnnserve metadata at all)"
                    )
        cls.check_needs(spec)

    @classmethod
    def check_needs(cls, spec: ModelSpec) -> None:
        """Raises ValueError when the spec lacks what the task reads beyond its graphs (a
        vocab, ...). A hook rather than an override of check_spec: compiled by mypyc, a
        classmethod's `super()` call passes the metaclass as `cls`."""
        return None  # the graphs are all most tasks read

    @abstractmethod
    def input_metadata(self) -> list[TensorMetadata]:
        """The model's inputs, states among them (read once, into `inputs`)."""

    @abstractmethod
    def output_metadata(self) -> list[TensorMetadata]:
        """The model's outputs, states among them (read once, into `outputs`)."""

    @abstractmethod
    def prepare(self, request: InferRequest) -> Prepared:
        """Validate the request completely; nothing unchecked may reach ORT."""

    @abstractmethod
    def run(self, prepared: Prepared, execute: Execute) -> Result:
        """The whole answer to a prepared request (runs in a compute thread)."""

    def stream(self, prepared: Prepared, execute: Execute) -> Iterator[Result]:
        """The answer as a series of responses; one unless the task decodes token by token."""
        yield self.run(prepared, execute)

    def session_piece(self, prepared: Prepared, execute: Execute) -> tuple[Result, State]:
        """A piece of a session's sequence that is not its last, run from `prepared.state`:
        its answer and the state to carry to the next piece. Most tasks answer each piece
        as `run` does; a task that answers only once it has the whole input overrides this."""
        result = self.run(prepared, execute)
        return result, result.state(self.spec)

    def piece_key(self, prepared: Prepared) -> Hashable | None:
        """What one-row pieces of sessions must share to run as one batch (`stacked`): their
        length and the shapes of their input arrays (of one row each); None for a piece
        that runs alone (a task whose pieces do not answer as `run` does, or one with
        options)."""
        if not self.session_rows or prepared.rows != 1 or prepared.options:
            return None
        inputs = prepared.inputs.values()
        return prepared.lengths[0], tuple(v.shape for v in inputs if isinstance(v, np.ndarray))

    def stacked(self, pieces: Sequence[Prepared]) -> Prepared:
        """One-row pieces of equal `piece_key` as one batch, a row each, in order, its state
        at zero (for the sessions' states to be loaded into) and every output asked for."""
        axes = self.batch_axes
        inputs = {
            name: _stacked([piece.inputs[name] for piece in pieces], axes.get(name, 0))
            for name in pieces[0].inputs
        }
        rows = len(pieces)
        lengths = [piece.lengths[0] for piece in pieces]
        return Prepared(rows, inputs, self.spec.zero_state(rows), list(self.output_names), lengths)

    def parameters(self) -> dict[str, Parameter]:
        """Task facts for ModelMetadata parameters."""
        return {}

    def footprint(self, request: InferRequest) -> Footprint:
        """What the request implies (see Footprint), from the shapes of its tensors, before
        any validation: a malformed request is estimated as well as it can be and refused
        by `prepare`."""
        rows, steps = self.rows_and_steps(request)
        return Footprint(
            inputs=input_elements(request),
            input_bytes=request_bytes(request),
            outputs=self.output_elements(request, rows, steps),
            work=rows * steps * self.step_elements,
            rows=rows,
            steps=steps,
        )

    @abstractmethod
    def rows_and_steps(self, request: InferRequest) -> tuple[int, int]:
        """The batch rows and time steps the request's tensors say (0 where they say none)."""

    @abstractmethod
    def output_elements(self, request: InferRequest, rows: int, steps: int) -> int:
        """Elements of the outputs a request of `rows` x `steps` gets."""

    # State helpers shared by the tasks that expose it.

    def state_metadata(self, outputs: bool, optional: bool) -> list[TensorMetadata]:
        """The state inputs (or, with `outputs`, the state outputs) as wire tensors, in the
        graph's layout."""
        return [
            TensorMetadata(state.output if outputs else state.input, "FP32", state.shape, optional)
            for state in self.spec.states
        ]

    def initial_state(self, inputs: dict[str, Tensor], rows: int) -> State:
        """The state the client sent (`h0`, `c0`), zeros for any it left out, as held."""
        state = self.spec.zero_state(rows)
        for spec in self.spec.states:
            tensor = inputs.get(spec.input)
            if tensor is not None:
                array = validation.state_array(tensor, spec.graph_shape(rows), spec.batch_axis)
                state[spec.input] = spec.held(array)
        return state

    def state_outputs(self, graph_outputs: dict[str, np.ndarray]) -> State:
        """The state a graph run returned, keyed by the inputs that carry it on, as held."""
        return {state.input: state.held(graph_outputs[state.output]) for state in self.spec.states}

    def state_results(self, state: State) -> dict[str, np.ndarray]:
        """A held state as the wire outputs that return it (`hn`, `cn`)."""
        return {spec.output: spec.fed(state[spec.input]) for spec in self.spec.states}

    def respond(self, prepared: Prepared, result: Result) -> list[Tensor]:
        """The requested outputs as wire tensors."""
        datatypes = self.output_datatypes
        tensors = []
        for name in prepared.outputs:
            data = as_host(result.outputs[name])  # `hn` of a resident state: copied here
            if datatypes[name] == "BYTES":
                data = data.reshape(prepared.text_shape)
            tensors.append(Tensor(name, datatypes[name], tuple(data.shape), data))
        return tensors


def step_elements(spec: ModelSpec) -> int:
    """Elements the recurrent kernels hold per row and time step: per layer (one at a time),
    every gate and the step's hidden output, the previous layer's output, and the copy a
    head reads."""
    hidden = spec.hidden_size or max((state.after for state in spec.states), default=0)
    return hidden * spec.num_directions * (GATES.get(spec.cell or "lstm", 4) + 3)


def _stacked(values: list[Any], axis: int) -> Any:
    """Inputs of one row each as one batch: arrays joined on their batch axis, per-row lists
    (the tagger's token rows) one after the other."""
    if isinstance(values[0], np.ndarray):
        return np.concatenate(values, axis=axis)
    return [row for value in values for row in value]


def take_rows(state: State, rows: Sequence[int]) -> State:
    return {name: np.ascontiguousarray(value[:, rows]) for name, value in state.items()}


def put_rows(target: State, rows: Sequence[int], source: State) -> None:
    for name, value in source.items():
        target[name][:, rows] = value


def text_array(texts: Sequence[str]) -> np.ndarray:
    """Strings as the object array of UTF-8 bytes a BYTES tensor holds."""
    array = np.empty(len(texts), dtype=object)
    array[:] = [text.encode("utf-8") for text in texts]
    return array
