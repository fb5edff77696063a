"""Sequence to sequence with greedy decoding in the server.

The encoder reads each source row (rows of equal length share one ORT run); the decoder
then runs one step per output token for the whole batch, from `bos_id`, until every row
has produced `eos_id` or `max_output_length` tokens are out. Streaming answers once per
decoded token.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property

import numpy as np

from rnnserve.model.spec import ModelSpec, rows_by_length
from rnnserve.service.tasks import validation
from rnnserve.service.tasks.base import (
    Execute,
    Prepared,
    Result,
    Task,
    put_rows,
    take_rows,
    text_array,
    text_dims,
)
from rnnserve.service.types import InferRequest, Parameter, State, TensorMetadata

MAX_OUTPUT_LENGTH = "max_output_length"


class Seq2SeqTask(Task):
    name = "seq2seq"
    graph_roles = frozenset({"encoder", "decoder"})
    graph_tensors = (
        ("encoder", ("tokens",), ()),
        ("decoder", ("token",), ("logits", "next_token")),
    )
    # A session's translation comes only after its last piece, decoded token by token:
    # rows ending in one request would each need their own decoding loop.
    session_rows = False
    request_parameters = frozenset({MAX_OUTPUT_LENGTH})

    @classmethod
    def check_spec(cls, spec: ModelSpec) -> None:
        super().check_spec(spec)
        if not spec.vocab or not spec.target_vocab:
            raise ValueError(f"task {cls.name} needs a vocab and a target_vocab")
        if spec.bos_id is None or spec.eos_id is None or not spec.max_output_length:
            raise ValueError(f"task {cls.name} needs bos_id, eos_id and max_output_length")

    @cached_property
    def char_ids(self) -> dict[str, int]:
        """Source characters a client may send; special tokens are not characters."""
        assert self.spec.vocab is not None  # ModelSpec guarantees it for text tasks
        return {token: index for index, token in enumerate(self.spec.vocab) if len(token) == 1}

    def input_metadata(self) -> list[TensorMetadata]:
        return [TensorMetadata("text", "BYTES", (-1,), text=True)]

    def output_metadata(self) -> list[TensorMetadata]:
        return [TensorMetadata("text_out", "BYTES", (-1,), text=True)]

    def parameters(self) -> dict[str, Parameter]:
        assert self.spec.max_output_length is not None  # ModelSpec guarantees it for seq2seq
        return {
            "vocab": "".join(sorted(self.char_ids)),
            MAX_OUTPUT_LENGTH: self.spec.max_output_length,
        }

    def prepare(self, request: InferRequest) -> Prepared:
        inputs = validation.check_input_names(request, self.input_names, required=["text"])
        rows = validation.text_rows(inputs["text"], self.settings)
        token_rows = validation.decode_text("text", rows, self.char_ids, self.settings)
        outputs = validation.check_output_names(request, self.output_names, self.output_names)
        limit = validation.int_parameter(
            request.parameters,
            MAX_OUTPUT_LENGTH,
            self.spec.max_output_length or 1,
            self.settings.max_sequence_length,
        )
        return Prepared(
            len(token_rows),
            {"tokens": token_rows},
            self.spec.zero_state(len(token_rows)),
            outputs,
            [len(tokens) for tokens in token_rows],
            tuple(inputs["text"].shape),
            {MAX_OUTPUT_LENGTH: limit},
        )

    def rows_and_steps(self, request: InferRequest) -> tuple[int, int]:
        return text_dims(request, "text")

    def output_elements(self, request: InferRequest, rows: int, steps: int) -> int:
        """The translation's tokens, and each decoding step's logits (one step at a time)."""
        limit = request.parameters.get(MAX_OUTPUT_LENGTH, self.spec.max_output_length)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            limit = self.spec.max_output_length or 1  # prepare refuses it
        limit = min(limit, self.settings.max_sequence_length)
        assert self.spec.target_vocab is not None  # ModelSpec guarantees it for seq2seq
        return rows * (limit + len(self.spec.target_vocab) + self.step_elements)

    def run(self, prepared: Prepared, execute: Execute) -> Result:
        texts = [""] * prepared.rows
        for tokens, _ in self._decode(prepared, execute):
            texts = [text + self._char(token) for text, token in zip(texts, tokens, strict=True)]
        return Result({"text_out": text_array(texts)})

    def stream(self, prepared: Prepared, execute: Execute) -> Iterator[Result]:
        for tokens, last in self._decode(prepared, execute):
            yield Result({"text_out": text_array([self._char(t) for t in tokens])}, final=last)

    def session_piece(self, prepared: Prepared, execute: Execute) -> tuple[Result, State]:
        """Only reads the piece: encoding in pieces, each from the state the previous one
        left, equals encoding the whole source. The translation comes with the last piece,
        answered by `run` or `stream` from the carried state; until then text_out is empty."""
        empty = Result({"text_out": text_array([""] * prepared.rows)})
        return empty, self.encode(prepared, execute)

    def encode(self, prepared: Prepared, execute: Execute) -> State:
        """The encoder's final state for each row, starting from `prepared.state`."""
        token_rows: list[list[int]] = prepared.inputs["tokens"]
        state = self.spec.zero_state(prepared.rows)
        for _, rows in rows_by_length(token_rows).items():
            tokens = np.array([token_rows[row] for row in rows], np.int64)
            feeds = {"tokens": tokens, **take_rows(prepared.state, rows)}
            put_rows(state, rows, self.state_outputs(execute("encoder", feeds)))
        return state

    def _decode(self, prepared: Prepared, execute: Execute) -> Iterator[tuple[np.ndarray, bool]]:
        """Each step's output token per row (`eos_id` once a row has finished) and whether
        it is the last step."""
        bos, eos = self.spec.bos_id, self.spec.eos_id
        assert bos is not None and eos is not None  # check_spec guarantees them
        limit = prepared.options[MAX_OUTPUT_LENGTH]
        state = self.encode(prepared, execute)
        token = np.full(prepared.rows, bos, np.int64)
        finished = np.zeros(prepared.rows, bool)
        for position in range(limit):
            graph = execute("decoder", {"token": token, **state})
            token = graph["next_token"].astype(np.int64)
            state = self.state_outputs(graph)
            emitted = np.where(finished, eos, token)
            finished |= token == eos
            last = bool(finished.all()) or position + 1 == limit
            yield emitted, last
            if last:
                return

    def _char(self, token: int) -> str:
        """A decoded token's text; special tokens (eos, ...) have none."""
        assert self.spec.target_vocab is not None  # ModelSpec guarantees it for seq2seq
        text = self.spec.target_vocab[token]
        return text if len(text) == 1 else ""
