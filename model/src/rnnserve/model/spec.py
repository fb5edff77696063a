"""The self-description every exported model carries: one JSON document in the ONNX
metadata under the key `rnnserve`. The exporter writes it, the server reads it and
needs nothing else to serve the model. What each task requires of its spec (graphs,
vocabularies) is the task's own business (service/tasks/).

Graph contracts of the default tasks (all state tensors are `(layers*directions, batch,
hidden)`, FP32; a state input `h0` is carried on by the output `hn`, `c0` by `cn`):

- task "sine", graph "model":  x FP32 [batch, seq, input_size], h0[, c0]
                                -> y FP32 [batch, seq, output_size], hn[, cn]
- task "tagger", graph "model": tokens INT64 [batch, seq], h0[, c0]
                                -> logits FP32 [batch, seq, len(vocab)], hn[, cn]
- task "seq2seq", graph "encoder": tokens INT64 [batch, seq], h0[, c0] -> hn[, cn]
                  graph "decoder": token INT64 [batch] (previous output token), h0[, c0]
                                -> logits FP32 [batch, len(target_vocab)],
                                   next_token INT64 [batch] (argmax), hn[, cn]
  The decoder's state starts as the encoder's final state; decoding starts from
  `bos_id` and stops at `eos_id` or after `max_output_length` tokens.

Vocabularies are lists of single characters indexed by token id; special tokens are
written as "<pad>", "<bos>", "<eos>".

Task "recurrent" (service/tasks/recurrent.py), graph "model": any graph, its tensors named
as the graph names them. `data_inputs` and `data_outputs` describe the tensors of each
request (datatype, shape, batch axis, sequence axis); `state_tensors` pairs each state
input with the output that returns it, with the state's shape and batch axis. Specs
without `state_tensors` derive their states from `cell`, `num_layers`, `num_directions` and
`hidden_size`, as the default tasks export them.

Whatever the graph's layout, the server holds a state as a 3-D array `(before, rows, after)`:
the state's dimensions before its batch axis multiplied together, the rows, and those after
it multiplied together: a reshape, never a copy, of a C-contiguous array. For the default
models that is the graph's own `(layers*directions, rows, hidden)`; stores, sessions and the
batcher move rows on axis 1 whatever the graph.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence, Sized
from functools import cached_property
from typing import Literal, NamedTuple

import numpy as np
from pydantic import BaseModel, Field, model_validator

# A state by the graph input that feeds it (h0, c0): (before, rows, after), rows on axis 1.
State = dict[str, np.ndarray]

METADATA_KEY = "rnnserve"
FORMAT_VERSION = 1

Cell = Literal["rnn", "lstm", "gru"]


class StatePair(NamedTuple):
    """A recurrent state: the graph input it is fed through and the output that returns it
    after the last step, which the next step is fed."""

    input: str
    output: str


def cell_states(cell: str) -> list[StatePair]:
    """The states a cell carries, named as the exported graphs name them: h (h_n), and c
    (c_n) for an LSTM."""
    stems = ("h", "c") if cell == "lstm" else ("h",)
    return [StatePair(f"{stem}0", f"{stem}n") for stem in stems]


class TensorSpec(BaseModel):
    """A data tensor of a graph (not a state), as the recurrent task serves it."""

    name: str
    datatype: str  # the Open Inference Protocol's name: FP32, INT64, ...
    shape: tuple[int, ...]  # the graph's shape, -1 for each dynamic dimension
    batch_axis: int = Field(ge=0)
    sequence_axis: int | None = Field(None, ge=0)  # None: one value per row, not per step
    # An integer input whose values index an embedding's rows (model/embeddings.py): each
    # from 0 to embedding_rows - 1, checked before ORT sees them.
    embedding_rows: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _check_axes(self) -> TensorSpec:
        for label, axis in (("batch_axis", self.batch_axis), ("sequence_axis", self.sequence_axis)):
            if axis is not None and (axis >= len(self.shape) or self.shape[axis] != -1):
                raise ValueError(
                    f"tensor '{self.name}': {label} {axis} is not a dynamic dimension of its "
                    f"shape {list(self.shape)}"
                )
        if self.sequence_axis == self.batch_axis:
            raise ValueError(
                f"tensor '{self.name}': batch and sequence axis are both {self.batch_axis}"
            )
        return self


class StateSpec(BaseModel):
    """A recurrent state: the graph input `input` that feeds it, the output `output` that
    returns it after the last step, its shape in the graph (-1 at the batch axis only)."""

    input: str
    output: str
    shape: tuple[int, ...]
    batch_axis: int = Field(ge=0)
    datatype: Literal["FP32"] = "FP32"

    @model_validator(mode="after")
    def _check_shape(self) -> StateSpec:
        dynamic = [axis for axis, size in enumerate(self.shape) if size == -1]
        if dynamic != [self.batch_axis] or any(size < 1 for size in self.shape if size != -1):
            raise ValueError(
                f"state '{self.input}': shape {list(self.shape)} must have -1 at its batch axis "
                f"{self.batch_axis} and fixed positive sizes everywhere else"
            )
        return self

    # Read on every step (a state's layout): computed once, as the spec never changes.
    @cached_property
    def before(self) -> int:
        """The state's dimensions before its batch axis, multiplied together."""
        return math.prod(self.shape[: self.batch_axis])

    @cached_property
    def after(self) -> int:
        """The state's dimensions after its batch axis, multiplied together."""
        return math.prod(self.shape[self.batch_axis + 1 :])

    def graph_shape(self, rows: int) -> tuple[int, ...]:
        """The state of `rows` rows as the graph takes and returns it."""
        return tuple(rows if size == -1 else size for size in self.shape)

    def held(self, array: np.ndarray) -> np.ndarray:
        """A state in the graph's layout as the server holds it: (before, rows, after)."""
        shape = array.shape
        # The graph's layout already the held one (every cell's state): no numpy call.
        held = self.batch_axis == 1 and len(shape) == 3
        if held and shape[0] == self.before and shape[2] == self.after:
            return array
        return array.reshape(self.before, shape[self.batch_axis], self.after)

    def fed(self, array: np.ndarray) -> np.ndarray:
        """A state held by the server in the graph's layout."""
        return array.reshape(self.graph_shape(array.shape[1]))


class ModelSpec(BaseModel):
    format_version: int = FORMAT_VERSION
    task: str  # a task registered in service/tasks/, which checks the rest of the spec
    # What the recurrent cell is, for the default tasks (required where `state_tensors` is
    # absent) and where `rnnserve import` could read it from the graph's nodes.
    cell: Cell | None = None
    num_layers: int | None = Field(None, ge=1)
    hidden_size: int | None = Field(None, ge=1)
    num_directions: Literal[1, 2] = 1
    input_size: int | None = Field(None, ge=1, description="sine: features per step")
    output_size: int | None = Field(None, ge=1, description="sine: features per step")
    # Character models only.
    vocab: list[str] | None = None  # tagger: input and output; seq2seq: source
    target_vocab: list[str] | None = None  # seq2seq only
    pad_id: int | None = None
    bos_id: int | None = None
    eos_id: int | None = None
    max_output_length: int | None = None
    # seq2seq: the vocabulary's letters stand for their upper case too; the server reads a
    # request's upper-case letters as lower case (the dates are learnt in lower case).
    fold_case: bool = False
    # graph role ("model", "encoder", "decoder") -> file name inside the version folder
    graphs: dict[str, str]
    # graph role -> its input and output tensor names, in order
    graph_inputs: dict[str, list[str]]
    graph_outputs: dict[str, list[str]]
    # The recurrent task: the data tensors of its graph and its states (see the top).
    data_inputs: list[TensorSpec] | None = None
    data_outputs: list[TensorSpec] | None = None
    state_tensors: list[StateSpec] | None = None
    streamable: bool
    # Free-form facts from training (or import), shown in ModelMetadata parameters.
    training: dict[str, float | int | str] = Field(default_factory=dict)

    @cached_property
    def states(self) -> list[StateSpec]:
        """Every state, declared or derived from the cell: (layers*directions, batch,
        hidden) with the batch on axis 1."""
        if self.state_tensors is not None:
            return self.state_tensors
        assert self.cell is not None and self.hidden_size is not None  # the validator's
        shape = (self.state_rows, -1, self.hidden_size)
        return [
            StateSpec(input=pair.input, output=pair.output, shape=shape, batch_axis=1)
            for pair in cell_states(self.cell)
        ]

    @cached_property
    def state_inputs(self) -> list[str]:
        return [state.input for state in self.states]

    @cached_property
    def state_outputs(self) -> list[str]:
        return [state.output for state in self.states]

    @property
    def state_rows(self) -> int:
        """Rows of a cell's state: layers*directions (cell-derived states only)."""
        assert self.num_layers is not None  # cell-derived states have it
        return self.num_layers * self.num_directions

    def zero_state(self, rows: int) -> State:
        """Every state of `rows` rows at zero, as the server holds states."""
        return {
            state.input: np.zeros((state.before, rows, state.after), np.float32)
            for state in self.states
        }

    def batch_axes(self, role: str | None = None) -> dict[str, int]:
        """Where the tensors of graph `role` (of every graph and the wire, by default) have
        their batch: axis 0 unless listed here."""
        axes = {
            name: state.batch_axis for state in self.states for name in (state.input, state.output)
        }
        for tensor in [*(self.data_inputs or []), *(self.data_outputs or [])]:
            axes[tensor.name] = tensor.batch_axis
        if role is not None:
            names = {*self.graph_inputs[role], *self.graph_outputs[role]}
            axes = {name: axis for name, axis in axes.items() if name in names}
        return {name: axis for name, axis in axes.items() if axis != 0}

    @model_validator(mode="after")
    def _check_consistency(self) -> ModelSpec:
        if self.num_directions == 2 and self.streamable:
            raise ValueError("a bidirectional model cannot be streamable")
        if set(self.graphs) != set(self.graph_inputs) or set(self.graphs) != set(
            self.graph_outputs
        ):
            raise ValueError("graphs, graph_inputs and graph_outputs must name the same roles")
        if self.state_tensors is None and (
            self.cell is None or self.num_layers is None or self.hidden_size is None
        ):
            raise ValueError(
                "a spec without state_tensors needs cell, num_layers and hidden_size, from "
                "which its states follow"
            )
        return self

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        return cls.model_validate(json.loads(text))


def rows_by_length(token_rows: Sequence[Sized]) -> dict[int, list[int]]:
    """Row indices grouped by sequence length (of tokens or of text): rows of one length
    share one ORT run, never padded (seq2seq's encoder, above, takes one length a batch)."""
    groups: dict[int, list[int]] = {}
    for index, tokens in enumerate(token_rows):
        groups.setdefault(len(tokens), []).append(index)
    return groups
