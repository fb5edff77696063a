"""Sequence to sequence with greedy decoding in the server.

The encoder reads each source row (rows of equal length share one ORT run); the decoder
then runs one step per output token for the whole batch, from `bos_id`, until every row
has produced `eos_id` or `max_output_length` tokens are out. Streaming answers once per
decoded token.

`confidence`, when a request names it, is each row's probability of its whole answer under
the model: the product over its decoded tokens (the closing `eos_id` among them) of the
softmax of the decoder's logits at the chosen token. The product, not the least of them:
by the chain rule it is the probability the model gives the answer it chose, so several
doubtful characters count as well as one very doubtful one; and every answer in the
grammar has the same length, so the product does not favour short ones among them. An
input outside what the model learnt still gets its best guess, with a lower confidence.
A request naming no outputs gets `text_out` alone, as before the output existed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from rnnserve.model.spec import ModelSpec, rows_by_length
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
from rnnserve.service.tasks.footprint import text_dims
from rnnserve.service.types import InferRequest, Parameter, State, TensorMetadata

MAX_OUTPUT_LENGTH = "max_output_length"
TEXT_OUT, CONFIDENCE = "text_out", "confidence"


@dataclass
class Step:
    """One decoding step of every row."""

    tokens: np.ndarray  # each row's output token; `eos_id` once the row has finished
    log_probabilities: np.ndarray | None  # of those tokens, 0 once finished (None: unasked)
    last: bool  # every row has finished, or the length limit is reached


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
    streams_tokens = True
    request_parameters = frozenset({MAX_OUTPUT_LENGTH})

    @classmethod
    def check_needs(cls, spec: ModelSpec) -> None:
        if not spec.vocab or not spec.target_vocab:
            raise ValueError(f"task {cls.name} needs a vocab and a target_vocab")
        if spec.bos_id is None or spec.eos_id is None or not spec.max_output_length:
            raise ValueError(f"task {cls.name} needs bos_id, eos_id and max_output_length")

    def __init__(self, spec: ModelSpec, settings: Settings) -> None:
        # Source characters a client may send; special tokens are not characters. Where
        # the spec folds case, a letter's upper case reads as the letter.
        assert spec.vocab is not None  # check_spec guarantees it
        ids = {token: index for index, token in enumerate(spec.vocab) if len(token) == 1}
        if spec.fold_case:
            ids |= {char.upper(): ids[char] for char in list(ids) if char.upper() not in ids}
        self.char_ids = ids
        super().__init__(spec, settings)

    def input_metadata(self) -> list[TensorMetadata]:
        return [TensorMetadata("text", "BYTES", validation.TEXT_SHAPE, text=True)]

    def output_metadata(self) -> list[TensorMetadata]:
        # confidence: one per text row, in the text's shape as text_out is.
        return [
            TensorMetadata(TEXT_OUT, "BYTES", validation.TEXT_SHAPE, text=True),
            TensorMetadata(CONFIDENCE, "FP32", validation.TEXT_SHAPE),
        ]

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
        outputs = validation.check_output_names(request, self.output_names, [TEXT_OUT])
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
        """The translation's tokens, each decoding step's logits (one step at a time) and
        the confidence."""
        limit = request.parameters.get(MAX_OUTPUT_LENGTH, self.spec.max_output_length)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            limit = self.spec.max_output_length or 1  # prepare refuses it
        limit = min(limit, self.settings.max_sequence_length)
        assert self.spec.target_vocab is not None  # ModelSpec guarantees it for seq2seq
        return rows * (limit + len(self.spec.target_vocab) + self.step_elements + 1)

    def run(self, prepared: Prepared, execute: Execute) -> Result:
        texts = [""] * prepared.rows
        log_confidence = np.zeros(prepared.rows)
        for step in self._decode(prepared, execute):
            texts = [
                text + self._char(token)
                for text, token in zip(texts, step.tokens.tolist(), strict=True)
            ]
            if step.log_probabilities is not None:
                log_confidence += step.log_probabilities
        return self._result(prepared, texts, log_confidence)

    def stream(self, prepared: Prepared, execute: Execute) -> Iterator[Result]:
        """A response per step: its token of each row, and the confidence in the answer so
        far (the last response's is the whole answer's)."""
        log_confidence = np.zeros(prepared.rows)
        for step in self._decode(prepared, execute):
            if step.log_probabilities is not None:
                log_confidence += step.log_probabilities
            texts = [self._char(token) for token in step.tokens.tolist()]
            yield self._result(prepared, texts, log_confidence, final=step.last)

    def session_piece(self, prepared: Prepared, execute: Execute) -> tuple[Result, State]:
        """Only reads the piece: encoding in pieces, each from the state the previous one
        left, equals encoding the whole source. The translation comes with the last piece,
        answered by `run` or `stream` from the carried state; until then text_out is empty
        and the confidence 0 (no answer yet)."""
        empty = self._result(prepared, [""] * prepared.rows, np.full(prepared.rows, -np.inf))
        return empty, self.encode(prepared, execute)

    def _result(
        self, prepared: Prepared, texts: list[str], log_confidence: np.ndarray, final: bool = True
    ) -> Result:
        outputs = {TEXT_OUT: text_array(texts)}
        if CONFIDENCE in prepared.outputs:
            confidence = np.exp(log_confidence).astype(np.float32)
            outputs[CONFIDENCE] = confidence.reshape(prepared.text_shape)
        return Result(outputs, final=final)

    def encode(self, prepared: Prepared, execute: Execute) -> State:
        """The encoder's final state for each row, starting from `prepared.state`."""
        token_rows: list[list[int]] = prepared.inputs["tokens"]
        state = self.spec.zero_state(prepared.rows)
        for _, rows in rows_by_length(token_rows).items():
            tokens = np.array([token_rows[row] for row in rows], np.int64)
            feeds = {"tokens": tokens, **take_rows(prepared.state, rows)}
            put_rows(state, rows, self.state_outputs(execute("encoder", feeds)))
        return state

    def _decode(self, prepared: Prepared, execute: Execute) -> Iterator[Step]:
        """Each step of greedy decoding, until every row has finished or the limit; the
        tokens' log-probabilities only where the request asks for the confidence."""
        bos, eos = self.spec.bos_id, self.spec.eos_id
        assert bos is not None and eos is not None  # check_spec guarantees them
        limit = prepared.options[MAX_OUTPUT_LENGTH]
        scored = CONFIDENCE in prepared.outputs
        state = self.encode(prepared, execute)
        token = np.full(prepared.rows, bos, np.int64)
        finished = np.zeros(prepared.rows, bool)
        for position in range(limit):
            graph = execute("decoder", {"token": token, **state})
            token = graph["next_token"].astype(np.int64)
            state = self.state_outputs(graph)
            emitted = np.where(finished, eos, token)
            chosen = (
                np.where(finished, 0.0, log_softmax_at(graph["logits"], token)) if scored else None
            )
            finished |= token == eos
            last = bool(finished.all()) or position + 1 == limit
            yield Step(emitted, chosen, last)
            if last:
                return

    def _char(self, token: int) -> str:
        """A decoded token's text; special tokens (eos, ...) have none."""
        assert self.spec.target_vocab is not None  # ModelSpec guarantees it for seq2seq
        text = self.spec.target_vocab[token]
        return text if len(text) == 1 else ""


def log_softmax_at(logits: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Each row's log-probability of its token under the softmax of its logits (rows,
    vocabulary), in float64, the largest logit taken out first so that none overflows."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    log_probabilities: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return np.take_along_axis(log_probabilities, tokens[:, None], axis=1)[:, 0]
