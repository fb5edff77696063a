"""Character tagging: one output character per input character ("hello" -> "ohlol").

Text rows of one batch may differ in length; rows of equal length share one ORT run and
the token-level outputs are padded (`pad_id` or -1 tokens, zero logits) to the longest row.
"""

from __future__ import annotations

from typing import cast

import numpy as np

from rnnserve.model.spec import ModelSpec, rows_by_length
from rnnserve.service.errors import InvalidArgument
from rnnserve.service.settings import Settings
from rnnserve.service.tasks import validation
from rnnserve.service.tasks.base import (
    Execute,
    Prepared,
    Result,
    Task,
    put_rows,
    take_rows,
    text_array,
)
from rnnserve.service.tasks.footprint import dims, text_dims
from rnnserve.service.types import InferRequest, Parameter, Tensor, TensorMetadata


class TaggerTask(Task):
    name = "tagger"
    graph_roles = frozenset({"model"})
    graph_tensors = (("model", ("tokens",), ("logits",)),)

    @classmethod
    def check_needs(cls, spec: ModelSpec) -> None:
        if not spec.vocab:
            raise ValueError(f"task {cls.name} needs a vocab")

    def __init__(self, spec: ModelSpec, settings: Settings) -> None:
        assert spec.vocab is not None  # check_spec guarantees it
        self.vocab = spec.vocab
        # Characters a client may send; special tokens ("<pad>", ...) are not characters.
        self.char_ids = {token: index for index, token in enumerate(spec.vocab) if len(token) == 1}
        super().__init__(spec, settings)

    def input_metadata(self) -> list[TensorMetadata]:
        return [
            TensorMetadata("text", "BYTES", validation.TEXT_SHAPE, text=True),
            TensorMetadata("tokens", "INT64", (-1, -1), optional=True),
            *self.state_metadata(outputs=False, optional=True),
        ]

    def output_metadata(self) -> list[TensorMetadata]:
        return [
            TensorMetadata("text_out", "BYTES", validation.TEXT_SHAPE, text=True),
            TensorMetadata("tokens_out", "INT64", (-1, -1)),
            TensorMetadata("logits", "FP32", (-1, -1, len(self.vocab))),
            *self.state_metadata(outputs=True, optional=True),
        ]

    def parameters(self) -> dict[str, Parameter]:
        return {"vocab": "".join(sorted(self.char_ids))}

    def prepare(self, request: InferRequest) -> Prepared:
        inputs = validation.check_input_names(request, self.input_names)
        if "text" in inputs and "tokens" in inputs:
            raise InvalidArgument("inputs 'text' and 'tokens' are alternatives; expected one")
        if "tokens" in inputs:
            token_rows = self._token_input(inputs["tokens"])
            text_shape: tuple[int, ...] = (len(token_rows),)
            default = ["tokens_out", *self.spec.state_outputs]
        elif "text" in inputs:
            rows = validation.text_rows(inputs["text"], self.settings)
            token_rows = validation.decode_text("text", rows, self.char_ids, self.settings)
            text_shape = tuple(inputs["text"].shape)
            default = ["text_out", *self.spec.state_outputs]
        else:
            raise InvalidArgument(
                f"missing input 'text' (or 'tokens') for model '{request.model_name}'"
            )
        outputs = validation.check_output_names(request, self.output_names, default)
        state = self.initial_state(inputs, len(token_rows))
        lengths = [len(tokens) for tokens in token_rows]
        return Prepared(
            len(token_rows), {"tokens": token_rows}, state, outputs, lengths, text_shape
        )

    def _token_input(self, tensor: Tensor) -> list[list[int]]:
        tokens = validation.numeric_array(tensor, "INT64", 2)
        validation.check_batch("tokens", tokens.shape[0], self.settings)
        validation.check_sequence("tokens", tokens.shape[1], self.settings)
        validation.check_ids("tokens", tokens, len(self.vocab))
        return cast(list[list[int]], tokens.tolist())  # Any: a 2-D int array's rows

    def rows_and_steps(self, request: InferRequest) -> tuple[int, int]:
        if any(tensor.name == "tokens" for tensor in request.inputs):
            rows, steps = dims(request, "tokens", 0, 1)
            return rows, steps
        return text_dims(request, "text")

    def output_elements(self, request: InferRequest, rows: int, steps: int) -> int:
        return rows * steps * (len(self.vocab) + 2)  # logits, and tokens_out or text_out

    def run(self, prepared: Prepared, execute: Execute) -> Result:
        token_rows: list[list[int]] = prepared.inputs["tokens"]
        longest = max(len(tokens) for tokens in token_rows)
        logits = np.zeros((prepared.rows, longest, len(self.vocab)), np.float32)
        state = self.spec.zero_state(prepared.rows)
        for length, rows in rows_by_length(token_rows).items():
            tokens = np.array([token_rows[row] for row in rows], np.int64)
            feeds = {"tokens": tokens, **take_rows(prepared.state, rows)}
            graph = execute("model", feeds)
            logits[rows, :length] = graph["logits"]
            put_rows(state, rows, self.state_outputs(graph))
        tokens_out = logits.argmax(axis=2)
        # Past a row's end: the pad token, or -1 (no token) for a vocabulary without one.
        pad = -1 if self.spec.pad_id is None else self.spec.pad_id
        for row, row_tokens in enumerate(token_rows):
            tokens_out[row, len(row_tokens) :] = pad
        texts = [
            self._text(tokens_out[row, : len(tokens)]) for row, tokens in enumerate(token_rows)
        ]
        return Result(
            {
                "text_out": text_array(texts),
                "tokens_out": tokens_out,
                "logits": logits,
                **self.state_results(state),
            }
        )

    def _text(self, tokens: np.ndarray) -> str:
        """Characters of the tokens; special tokens have no text."""
        texts = (self.vocab[i] for i in tokens.tolist())
        return "".join(text for text in texts if len(text) == 1)
