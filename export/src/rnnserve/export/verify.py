"""The checks every export must pass before it enters the repository.

(a) onnx.checker accepts every graph; (b) every batch and sequence axis is symbolic;
(c) ONNX Runtime matches torch within TOLERANCE at each of PARITY_SIZES, outputs and
states; (d) one-way sequence graphs give the same answer fed in random chunks with the
state carried as fed whole; (e) a task's own checks of its graphs together (seq2seq:
greedy decoding through the ONNX graphs equals torch's on held-out examples, in
export/tasks/seq2seq.py). A failure raises VerificationError naming the check.

Parity compares ONNX Runtime's float32 answer with torch's float64 answer for the same
weights, the exact function the model computes. Over a thousand steps a long-memory cell
accumulates float32 rounding in torch as much as in ORT (measured on a GRU encoder: torch
float32 1.4e-5 off the exact answer, ORT 5.5e-6), so two float32 runs can differ by more
than the bound while each is as exact as float32 allows; the float64 reference is fair.

Errors are measured as |a - b| / max(1, |b|): absolute for values up to 1 (every h, sine
outputs) and relative above, because float32 carries about seven significant digits and an
LSTM's cell state or a logit can grow well past 1 over a thousand steps.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from rnnserve.export.errors import VerificationError
from rnnserve.export.onnx_graphs import dynamic_axes
from rnnserve.export.tasks.base import Graph
from rnnserve.model.describe import deviation

TOLERANCE = 1e-5
PARITY_SIZES = ((1, 1), (8, 100), (2, 1000))
CHUNK_STEPS = 1000
CHUNK_BATCH = 2


@dataclass
class GraphReport:
    parity_error: float
    chunk_error: float | None  # None where the check does not apply


def open_session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def check_graph(graph: Graph, path: Path) -> GraphReport:
    check_onnx(graph, path)
    check_symbolic_axes(graph, path)
    session = open_session(path)
    parity = check_parity(graph, session)
    chunk = check_chunks(graph, session) if graph.sequence and graph.one_way else None
    return GraphReport(parity, chunk)


def check_onnx(graph: Graph, path: Path) -> None:
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise VerificationError(
            f"check (a) onnx.checker failed for {graph.role}: {error}"
        ) from None


def check_symbolic_axes(graph: Graph, path: Path) -> None:
    saved = onnx.load(str(path)).graph
    values = {v.name: v for v in (*saved.input, *saved.output)}
    for name, axes in dynamic_axes(graph).items():
        dims = values[name].type.tensor_type.shape.dim
        for axis, label in axes.items():
            if not dims[axis].dim_param:
                raise VerificationError(
                    f"check (b) symbolic axes failed for {graph.role}: {name} axis {axis} "
                    f"({label}) is fixed at {dims[axis].dim_value}"
                )


def _feeds(graph: Graph, inputs: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
    return {name: t.numpy() for name, t in zip(graph.input_names, inputs, strict=True)}


def check_parity(graph: Graph, session: ort.InferenceSession) -> float:
    """Largest deviation of ORT from torch (float64) over every output at every size;
    raises above TOLERANCE."""
    generator = torch.Generator().manual_seed(1)
    reference = copy.deepcopy(graph.module).double().eval()
    worst = 0.0
    for batch, seq in PARITY_SIZES:
        inputs = (graph.make_input(batch, seq, generator), *graph.random_state(batch, generator))
        with torch.no_grad():
            expected = reference(*(t.double() if t.is_floating_point() else t for t in inputs))
        actual = session.run(graph.output_names, _feeds(graph, inputs))
        for name, want, got in zip(graph.output_names, expected, actual, strict=True):
            if tuple(want.shape) != got.shape:
                raise VerificationError(
                    f"check (c) parity failed for {graph.role}: {name} has shape {got.shape}, "
                    f"torch gives {tuple(want.shape)} at batch={batch}, seq={seq}"
                )
            error = deviation(got, want.numpy())
            if error > TOLERANCE:
                raise VerificationError(
                    f"check (c) parity failed for {graph.role}: onnx deviates from torch on {name} "
                    f"by {error:.3g} > {TOLERANCE:g} at batch={batch}, seq={seq}"
                )
            worst = max(worst, error)
    return worst


def check_chunks(graph: Graph, session: ort.InferenceSession) -> float:
    """Feed CHUNK_STEPS steps in random chunks carrying the state; compare with one run."""
    generator = torch.Generator().manual_seed(2)
    sequence = graph.make_input(CHUNK_BATCH, CHUNK_STEPS, generator).numpy()
    state = [s.numpy() for s in graph.random_state(CHUNK_BATCH, generator)]
    state_inputs = graph.input_names[1:]
    whole = session.run(
        graph.output_names, dict(zip(graph.input_names, [sequence, *state], strict=True))
    )

    rng = random.Random(3)
    pieces: list[list[np.ndarray]] = []
    start = 0
    while start < CHUNK_STEPS:
        stop = min(CHUNK_STEPS, start + rng.randint(1, 100))
        feeds = {
            graph.input_names[0]: sequence[:, start:stop],
            **dict(zip(state_inputs, state, strict=True)),
        }
        outputs = session.run(graph.output_names, feeds)
        pieces.append(outputs[: len(outputs) - graph.num_states])
        state = outputs[len(outputs) - graph.num_states :]
        start = stop
    chunked = [np.concatenate(parts, axis=1) for parts in zip(*pieces, strict=True)] + state

    error = max(deviation(c, w) for w, c in zip(whole, chunked, strict=True))
    if error > TOLERANCE:
        raise VerificationError(
            f"check (d) chunked streaming failed for {graph.role}: chunked deviates from whole "
            f"by {error:.3g} > {TOLERANCE:g} over {CHUNK_STEPS} steps"
        )
    return error
