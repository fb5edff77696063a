"""Helpers for the gRPC tests: building requests, and an in-process ONNX Runtime oracle
that runs the repository's graphs directly, as the graph contracts in
model/spec.py describe them, for comparing the server's answers with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from rnnserve.client.client import build_request, decode_response
from rnnserve.model.spec import METADATA_KEY, ModelSpec
from rnnserve.protocol import messages as pb
from rnnserve.protocol.codec import Parameter

CELLS = ["rnn", "lstm", "gru"]
MODEL_NAMES = [f"{task}-{cell}" for task in ("sine", "tagger", "seq2seq") for cell in CELLS]


def infer_request(
    model: str,
    inputs: dict[str, np.ndarray | list],
    outputs: list[str] | None = None,
    parameters: dict[str, Parameter] | None = None,
    version: str = "",
) -> pb.ModelInferRequest:
    """A ModelInferRequest with raw inputs, as our client (and Triton's) sends them."""
    return build_request(model, inputs, outputs or [], parameters, version)


def outputs_of(reply: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    return decode_response(reply).outputs


def failures_and_successes(server: Any, model: str) -> tuple[int, int]:
    """The model's failed and successful requests so far (ModelStatistics)."""
    (stats,) = server.stub.ModelStatistics(pb.ModelStatisticsRequest(name=model)).model_stats
    return stats.inference_stats.fail.count, stats.inference_stats.success.count


@dataclass
class Graphs:
    spec: ModelSpec
    sessions: dict[str, ort.InferenceSession]

    def run(self, role: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self.spec.graph_outputs[role]
        return dict(zip(names, self.sessions[role].run(names, feeds), strict=True))

    def zero_state(self, batch: int) -> dict[str, np.ndarray]:
        return self.spec.zero_state(batch)

    def next_state(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {pair.input: outputs[pair.output] for pair in self.spec.states}


class Reference:
    """The expected answers, computed with ONNX Runtime in this process."""

    def __init__(self, repository: Path) -> None:
        self.repository = repository
        self._graphs: dict[str, Graphs] = {}

    def graphs(self, model: str) -> Graphs:
        if model not in self._graphs:
            folder = max((self.repository / model).iterdir(), key=lambda p: int(p.name))
            first = ort.InferenceSession(
                str(next(folder.glob("*.onnx"))), providers=["CPUExecutionProvider"]
            )
            spec = ModelSpec.from_json(first.get_modelmeta().custom_metadata_map[METADATA_KEY])
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            sessions = {
                role: ort.InferenceSession(
                    str(folder / file), options, providers=["CPUExecutionProvider"]
                )
                for role, file in spec.graphs.items()
            }
            self._graphs[model] = Graphs(spec, sessions)
        return self._graphs[model]

    def sine(self, model: str, x: np.ndarray) -> np.ndarray:
        graphs = self.graphs(model)
        return graphs.run("model", {"x": x, **graphs.zero_state(x.shape[0])})["y"]

    def tag(self, model: str, text: str) -> str:
        graphs = self.graphs(model)
        vocab = graphs.spec.vocab or []
        tokens = np.array([[vocab.index(char) for char in text]], np.int64)
        logits = graphs.run("model", {"tokens": tokens, **graphs.zero_state(1)})["logits"]
        return "".join(vocab[i] for i in logits[0].argmax(axis=1))

    def translate(self, model: str, text: str, max_length: int | None = None) -> str:
        return self.translate_with_confidence(model, text, max_length)[0]

    def translate_with_confidence(
        self, model: str, text: str, max_length: int | None = None
    ) -> tuple[str, float]:
        """Greedy decoding as the graph contracts say, and the probability of the answer:
        the product of each step's softmax at the token it chose, <eos> included."""
        graphs = self.graphs(model)
        spec = graphs.spec
        vocab, target = spec.vocab or [], spec.target_vocab or []
        tokens = np.array([[vocab.index(char) for char in text]], np.int64)
        state = graphs.next_state(graphs.run("encoder", {"tokens": tokens, **graphs.zero_state(1)}))
        token, decoded, probability = spec.bos_id, [], 1.0
        for _ in range(max_length or spec.max_output_length or 0):
            out = graphs.run("decoder", {"token": np.array([token], np.int64), **state})
            token = int(out["next_token"][0])
            softmax = np.exp(out["logits"][0].astype(np.float64))
            probability *= softmax[token] / softmax.sum()
            if token == spec.eos_id:
                break
            decoded.append(target[token])
            state = graphs.next_state(out)
        return "".join(decoded), probability
