"""Recurrent models exported the way users export them: their own modules, their own tensor
names, `torch.onnx.export(..., dynamo=False)` with dynamic axes, random weights (nothing
here is trained: what is tested is serving them).

Each export names its data tensors and states and where their batch and sequence axes are,
for the tests to build requests in the graph's own layout.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass(frozen=True)
class Export:
    name: str
    features: int  # size of the data input's last axis
    batch_first: bool  # the data input is (batch, seq, features); else (seq, batch, features)
    data_input: str
    data_output: str
    states: dict[str, str]  # state input -> state output
    bidirectional: bool = False

    @property
    def batch_axis(self) -> int:
        return 0 if self.batch_first else 1

    @property
    def sequence_axis(self) -> int:
        return 1 if self.batch_first else 0


class TwoLayerGru(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(4, 16, num_layers=2, batch_first=True)

    def forward(self, features: torch.Tensor, state_in: torch.Tensor):  # type: ignore[no-untyped-def]
        return self.gru(features, state_in)


class SequenceFirstLstm(nn.Module):
    def __init__(self, bidirectional: bool = False) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 12, bidirectional=bidirectional)

    def forward(self, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor):  # type: ignore[no-untyped-def]
        y, (hn, cn) = self.lstm(x, (h0, c0))
        return y, hn, cn


class BidirectionalLstm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 8, batch_first=True, bidirectional=True)
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor):  # type: ignore[no-untyped-def]
        y, (h_n, c_n) = self.lstm(x, (h, c))
        return self.head(y), h_n, c_n


class ProjectedStack(nn.Module):
    """An input projection, a GRU whose state the module keeps batch-first, a two-layer RNN
    on top and a Linear head: two states of different shapes, batch on different axes."""

    def __init__(self) -> None:
        super().__init__()
        self.project = nn.Linear(5, 12)
        self.gru = nn.GRU(12, 16, batch_first=True)
        self.rnn = nn.RNN(16, 8, num_layers=2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, features: torch.Tensor, memory: torch.Tensor, state_in: torch.Tensor):  # type: ignore[no-untyped-def]
        hidden, memory_out = self.gru(
            torch.tanh(self.project(features)), memory.transpose(0, 1).contiguous()
        )
        out, state_out = self.rnn(hidden, state_in)
        return self.head(out), memory_out.transpose(0, 1), state_out


def _gru(path: Path) -> Export:
    seq = {0: "batch", 1: "seq"}
    _export(
        TwoLayerGru(), (torch.randn(3, 5, 4), torch.zeros(2, 3, 16)), path,
        inputs=["features", "state_in"], outputs=["out", "state_out"],
        dynamic_axes={"features": seq, "state_in": {1: "batch"}, "out": seq,
                      "state_out": {1: "batch"}},
    )  # fmt: skip
    return Export("gru2", 4, True, "features", "out", {"state_in": "state_out"})


def _lstm(path: Path) -> Export:
    # Dynamic axes as a list: torch names them itself, differently for every tensor.
    _export(
        SequenceFirstLstm(), (torch.randn(5, 3, 3), torch.zeros(1, 3, 12), torch.zeros(1, 3, 12)),
        path, inputs=["x", "h0", "c0"], outputs=["y", "hn", "cn"],
        dynamic_axes={"x": [0, 1], "h0": [1], "c0": [1], "y": [0, 1], "hn": [1], "cn": [1]},
    )  # fmt: skip
    return Export("lstm-seq-first", 3, False, "x", "y", {"h0": "hn", "c0": "cn"})


def _bidirectional(path: Path) -> Export:
    seq = {0: "batch", 1: "seq"}
    _export(
        BidirectionalLstm(), (torch.randn(3, 5, 3), torch.zeros(2, 3, 8), torch.zeros(2, 3, 8)),
        path, inputs=["x", "h", "c"], outputs=["scores", "h_n", "c_n"],
        dynamic_axes={"x": seq, "h": {1: "batch"}, "c": {1: "batch"}, "scores": seq,
                      "h_n": {1: "batch"}, "c_n": {1: "batch"}},
    )  # fmt: skip
    return Export("bilstm", 3, True, "x", "scores", {"h": "h_n", "c": "c_n"}, bidirectional=True)


def _projected(path: Path) -> Export:
    seq = {0: "batch", 1: "seq"}
    _export(
        ProjectedStack(), (torch.randn(3, 5, 5), torch.zeros(3, 1, 16), torch.zeros(2, 3, 8)),
        path, inputs=["features", "memory", "state_in"],
        outputs=["logits", "memory_out", "state_out"],
        dynamic_axes={"features": seq, "memory": {0: "batch"}, "state_in": {1: "batch"},
                      "logits": seq, "memory_out": {0: "batch"}, "state_out": {1: "batch"}},
    )  # fmt: skip
    return Export(
        "projected", 5, True, "features", "logits",
        {"memory": "memory_out", "state_in": "state_out"},
    )  # fmt: skip


EXPORTS: dict[str, Callable[[Path], Export]] = {
    "gru2": _gru,
    "lstm-seq-first": _lstm,
    "bilstm": _bidirectional,
    "projected": _projected,
}


def export_all(folder: Path) -> dict[str, tuple[Export, Path]]:
    """Every export as `<folder>/<name>/model.onnx`, with random weights (seeded)."""
    exported = {}
    for name, make in EXPORTS.items():
        torch.manual_seed(len(exported))
        path = folder / name / "model.onnx"
        path.parent.mkdir(parents=True)
        exported[name] = (make(path), path)
    return exported


def _export(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    inputs: list[str],
    outputs: list[str],
    dynamic_axes: dict,
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notes
        torch.onnx.export(
            module.eval(), example, str(path), dynamo=False, input_names=inputs,
            output_names=outputs, dynamic_axes=dynamic_axes,
        )  # fmt: skip


class StepCell(nn.Module):
    """One step per call (no sequence axis): a GRUCell whose input is as wide as its state,
    so that shapes alone cannot tell the state from the data."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.cell = nn.GRUCell(size, size)

    def forward(self, x: torch.Tensor, h: torch.Tensor):  # type: ignore[no-untyped-def]
        h_next = self.cell(x, h)
        return torch.tanh(h_next), h_next


class NoState(nn.Module):
    """A GRU whose state stays inside: the graph takes no state and returns none."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(3, 6, batch_first=True)

    def forward(self, x: torch.Tensor):  # type: ignore[no-untyped-def]
        return self.gru(x)[0]


def export_step_cell(path: Path, size: int = 6) -> None:
    _export(
        StepCell(size), (torch.randn(3, size), torch.zeros(3, size)), path,
        inputs=["x", "h"], outputs=["y", "h_next"],
        dynamic_axes={name: {0: "batch"} for name in ("x", "h", "y", "h_next")},
    )  # fmt: skip


def export_stateless(path: Path) -> None:
    seq = {0: "batch", 1: "seq"}
    _export(
        NoState(), (torch.randn(3, 5, 3),), path, inputs=["x"], outputs=["y"],
        dynamic_axes={"x": seq, "y": seq},
    )  # fmt: skip
