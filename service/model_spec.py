"""The self-description every exported model carries: one JSON document in the ONNX
metadata under the key `rnnserve`. The exporter writes it, the server reads it and
needs nothing else to serve the model.

Graph contracts (all state tensors are `(layers*directions, batch, hidden)`, FP32):

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
from typing import Literal

from pydantic import BaseModel, Field, model_validator

METADATA_KEY = "rnnserve"
FORMAT_VERSION = 1

Task = Literal["sine", "tagger", "seq2seq"]
Cell = Literal["rnn", "lstm", "gru"]


class ModelSpec(BaseModel):
    format_version: int = FORMAT_VERSION
    task: Task
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
    def state_names(self) -> list[str]:
        """State tensor stems: ["h"] or ["h", "c"] (inputs are stem+"0", outputs stem+"n")."""
        return ["h", "c"] if self.cell == "lstm" else ["h"]

    @property
    def state_rows(self) -> int:
        return self.num_layers * self.num_directions

    @model_validator(mode="after")
    def _check_consistency(self) -> ModelSpec:
        if self.num_directions == 2 and self.streamable:
            raise ValueError("a bidirectional model cannot be streamable")
        expected = {"sine": {"model"}, "tagger": {"model"}, "seq2seq": {"encoder", "decoder"}}
        if set(self.graphs) != expected[self.task]:
            raise ValueError(f"task {self.task} needs graphs {sorted(expected[self.task])}")
        if self.task != "sine" and not self.vocab:
            raise ValueError(f"task {self.task} needs a vocab")
        if self.task == "seq2seq" and (
            not self.target_vocab
            or self.bos_id is None
            or self.eos_id is None
            or not self.max_output_length
        ):
            raise ValueError("seq2seq needs target_vocab, bos_id, eos_id, max_output_length")
        return self

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        return cls.model_validate(json.loads(text))
