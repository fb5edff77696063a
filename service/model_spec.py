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
"""

from __future__ import annotations

import json
from typing import Literal, NamedTuple

import numpy as np
from pydantic import BaseModel, Field, model_validator

from rnnserve.service.types import State

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


class ModelSpec(BaseModel):
    format_version: int = FORMAT_VERSION
    task: str  # a task registered in service/tasks/, which checks the rest of the spec
    cell: Cell
    num_layers: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    num_directions: Literal[1, 2] = 1
    input_size: int = Field(ge=1, description="features per step; vocabulary size for text")
    output_size: int = Field(ge=1, description="features per step; vocabulary size for text")
    # Character models only.
    vocab: list[str] | None = None  # tagger: input and output; seq2seq: source
    target_vocab: list[str] | None = None  # seq2seq only
    pad_id: int | None = None
    bos_id: int | None = None
    eos_id: int | None = None
    max_output_length: int | None = None
    # graph role ("model", "encoder", "decoder") -> file name inside the version folder
    graphs: dict[str, str]
    # graph role -> its input and output tensor names, in order
    graph_inputs: dict[str, list[str]]
    graph_outputs: dict[str, list[str]]
    streamable: bool
    # Free-form facts from training, shown in ModelMetadata parameters.
    training: dict[str, float | int | str] = Field(default_factory=dict)

    @property
    def states(self) -> list[StatePair]:
        return cell_states(self.cell)

    @property
    def state_inputs(self) -> list[str]:
        return [pair.input for pair in self.states]

    @property
    def state_outputs(self) -> list[str]:
        return [pair.output for pair in self.states]

    @property
    def state_rows(self) -> int:
        return self.num_layers * self.num_directions

    def state_shape(self, rows: int) -> tuple[int, int, int]:
        """One state tensor of `rows` batch rows: (layers*directions, rows, hidden)."""
        return (self.state_rows, rows, self.hidden_size)

    def zero_state(self, rows: int) -> State:
        return {name: np.zeros(self.state_shape(rows), np.float32) for name in self.state_inputs}

    @model_validator(mode="after")
    def _check_consistency(self) -> ModelSpec:
        if self.num_directions == 2 and self.streamable:
            raise ValueError("a bidirectional model cannot be streamable")
        if set(self.graphs) != set(self.graph_inputs) or set(self.graphs) != set(
            self.graph_outputs
        ):
            raise ValueError("graphs, graph_inputs and graph_outputs must name the same roles")
        return self

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        return cls.model_validate(json.loads(text))
