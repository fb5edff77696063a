"""Writing graphs to ONNX."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from rnnserve.export.tasks.base import Graph

OPSET = 17
# Example sizes for tracing; above 1 so that no axis can be mistaken for a constant 1.
EXAMPLE_BATCH, EXAMPLE_SEQ = 3, 5


def dynamic_axes(graph: Graph) -> dict[str, dict[int, str]]:
    """Batch (and sequence) axes of every tensor: states are (rows, batch, hidden)."""
    leading = {0: "batch", 1: "seq"} if graph.sequence else {0: "batch"}
    return {
        **{name: leading for name in graph.inputs + graph.outputs},
        **{name: {1: "batch"} for pair in graph.states for name in pair},
    }


def export_graph(graph: Graph, path: Path) -> None:
    """Trace `graph` with the TorchScript exporter; the dynamo exporter fixes the sequence
    length of some RNN graphs and gets nn.RNN wrong."""
    generator = torch.Generator().manual_seed(0)
    inputs = (
        graph.make_input(EXAMPLE_BATCH, EXAMPLE_SEQ, generator),
        *graph.random_state(EXAMPLE_BATCH, generator),
    )
    with warnings.catch_warnings():
        # Deprecation and tracer notes about the legacy exporter; the checks that follow
        # are what tells us the graph is right.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph.module.eval(),
            inputs,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=graph.input_names,
            output_names=graph.output_names,
            dynamic_axes=dynamic_axes(graph),
        )
