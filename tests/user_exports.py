"""Recurrent models exported the way users export them: their own modules, their own tensor
names, `torch.onnx.export(..., dynamo=False)` with dynamic axes, random weights (nothing
here is trained: what is tested is serving them).

Each export names its data tensors and states and where their batch and sequence axes are,
for the tests to build requests in the graph's own layout.

The matrix (MATRIX, export_matrix) is every kind of own model a user brings, each exported
both ways torch 2.13 offers: the dynamo exporter (torch.onnx.export's default, the dynamic
axes as torch.export.Dim.AUTO) and the legacy one (`dynamo=False`, dynamic_axes=).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import itertools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.export import Dim


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


def _gru(path: Path, dynamo: bool = False) -> None:
    """Through the dynamo exporter: weights in model.onnx.data beside the graph, and `out`
    declared with the example's 5 steps."""
    seq = {0: "batch", 1: "seq"}
    _export(
        TwoLayerGru(), (torch.randn(3, 5, 4), torch.zeros(2, 3, 16)), path,
        inputs=["features", "state_in"], outputs=["out", "state_out"],
        dynamic_axes={"features": seq, "state_in": {1: "batch"}, "out": seq,
                      "state_out": {1: "batch"}}, dynamo=dynamo,
    )  # fmt: skip


def _unrolled_rnn(path: Path) -> None:
    """An nn.RNN through the dynamo exporter, which unrolls it over the example's steps."""
    export_case(UNROLLED, OwnModel(UNROLLED), path, seed=0)


def _lstm(path: Path) -> None:
    # Dynamic axes as a list: torch names them itself, differently for every tensor.
    _export(
        SequenceFirstLstm(), (torch.randn(5, 3, 3), torch.zeros(1, 3, 12), torch.zeros(1, 3, 12)),
        path, inputs=["x", "h0", "c0"], outputs=["y", "hn", "cn"],
        dynamic_axes={"x": [0, 1], "h0": [1], "c0": [1], "y": [0, 1], "hn": [1], "cn": [1]},
    )  # fmt: skip


def _bidirectional(path: Path) -> None:
    seq = {0: "batch", 1: "seq"}
    _export(
        BidirectionalLstm(), (torch.randn(3, 5, 3), torch.zeros(2, 3, 8), torch.zeros(2, 3, 8)),
        path, inputs=["x", "h", "c"], outputs=["scores", "h_n", "c_n"],
        dynamic_axes={"x": seq, "h": {1: "batch"}, "c": {1: "batch"}, "scores": seq,
                      "h_n": {1: "batch"}, "c_n": {1: "batch"}},
    )  # fmt: skip


def _projected(path: Path) -> None:
    seq = {0: "batch", 1: "seq"}
    _export(
        ProjectedStack(), (torch.randn(3, 5, 5), torch.zeros(3, 1, 16), torch.zeros(2, 3, 8)),
        path, inputs=["features", "memory", "state_in"],
        outputs=["logits", "memory_out", "state_out"],
        dynamic_axes={"features": seq, "memory": {0: "batch"}, "state_in": {1: "batch"},
                      "logits": seq, "memory_out": {0: "batch"}, "state_out": {1: "batch"}},
    )  # fmt: skip


def _export(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    inputs: list[str],
    outputs: list[str],
    dynamic_axes: dict,
    dynamo: bool = False,
) -> None:
    """torch.onnx.export as users call it: the legacy exporter with `dynamic_axes`, or the
    dynamo exporter with the same axes as torch.export.Dim.AUTO in `dynamic_shapes`, the one
    kind that torch 2.13 keeps dynamic whatever was exported before in the process (the
    second export of a GRU with dynamic_axes= or a named Dim traces its length as a
    constant)."""
    if dynamo:
        _forget_dispatch()
        shapes = tuple({axis: Dim.AUTO for axis in dynamic_axes.get(name, ())} for name in inputs)
        varargs = any(
            parameter.kind is inspect.Parameter.VAR_POSITIONAL
            for parameter in inspect.signature(module.forward).parameters.values()
        )
        how = {"dynamo": True, "dynamic_shapes": (shapes,) if varargs else shapes}
    else:
        how = {"dynamo": False, "dynamic_axes": dynamic_axes}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporters' deprecation notes, their progress
        torch.onnx.export(
            module.eval(), example, str(path), input_names=inputs, output_names=outputs, **how
        )


def _forget_dispatch() -> None:
    """Start each dynamo export as a fresh Python process does: torch 2.13 caches dispatch
    decisions in one export (aten.gru's, say) with which later exports in the process trace
    lengths as constants, or mix up batch and sequence. A user's script that exports once
    never sees it; a notebook that exports twice does."""
    for operator in list(torch._ops.get_cached_ops()):
        operator._dispatch_cache.clear()
    torch._ops.reset_cached_ops()


class StepCell(nn.Module):
    """One step per call (no sequence axis): a GRUCell whose input is as wide as its state,
    so that shapes alone cannot tell the state from the data."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.cell = nn.GRUCell(size, size)

    def forward(self, x: torch.Tensor, h: torch.Tensor):  # type: ignore[no-untyped-def]
        h_next = self.cell(x, h)
        return torch.tanh(h_next), h_next


class BatchMean(nn.Module):
    """A GRU whose output adds its batch's mean: a graph whose rows mix, as a normalisation
    over the batch makes them (its states do not)."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(4, 8, batch_first=True)

    def forward(self, features: torch.Tensor, state_in: torch.Tensor):  # type: ignore[no-untyped-def]
        out, state_out = self.gru(features, state_in)
        return out + out.mean(dim=0, keepdim=True), state_out


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


def export_batch_mean(path: Path) -> None:
    """BatchMean, named and laid out as gru2."""
    seq = {0: "batch", 1: "seq"}
    _export(
        BatchMean(), (torch.randn(3, 5, 4), torch.zeros(1, 3, 8)), path,
        inputs=["features", "state_in"], outputs=["out", "state_out"],
        dynamic_axes={"features": seq, "state_in": {1: "batch"}, "out": seq,
                      "state_out": {1: "batch"}},
    )  # fmt: skip


def export_stateless(path: Path) -> None:
    seq = {0: "batch", 1: "seq"}
    _export(
        NoState(), (torch.randn(3, 5, 3),), path, inputs=["x"], outputs=["y"],
        dynamic_axes={"x": seq, "y": seq},
    )  # fmt: skip


def export_fixed_length(path: Path) -> None:
    """gru2 with its batch alone dynamic: the export fixes its length at the example's 5."""
    _export(
        TwoLayerGru(), (torch.randn(3, 5, 4), torch.zeros(2, 3, 16)), path,
        inputs=["features", "state_in"], outputs=["out", "state_out"],
        dynamic_axes={name: {0 if name in ("features", "out") else 1: "batch"}
                      for name in ("features", "state_in", "out", "state_out")},
    )  # fmt: skip


# The matrix of own models -----------------------------------------------------------

CELLS = ("RNN", "LSTM", "GRU")
KINDS = ("embedding", "stacked", "bidirectional", "lengths", "per-sequence")
VOCAB, FEATURES, HIDDEN, CLASSES = 9, 3, 5, 4  # tiny: the whole matrix exports quickly
EXAMPLE_ROWS, EXAMPLE_STEPS = 2, 6  # the example torch traces with


@dataclass(frozen=True)
class Case:
    """One own model: its cell, the exporter, its layout, whether the graph takes and
    returns its states (else it keeps them inside, from zeros), and its kind:

    - embedding: tokens -> Embedding -> cell -> Linear head on every step
    - stacked: features -> a two-layer cell -> head on every step
    - bidirectional: features -> a bidirectional cell -> head on every step
    - lengths: tokens and each row's length -> embedding, cell, head; steps past the
      row's length answer zeros
    - per-sequence: features -> cell -> head on the last step: one output per sequence
    """

    cell: str
    dynamo: bool
    batch_first: bool
    takes_states: bool
    kind: str

    @property
    def name(self) -> str:
        return "-".join([
            self.cell.lower(), self.kind, "dynamo" if self.dynamo else "legacy",
            "bf" if self.batch_first else "sf", "state" if self.takes_states else "stateless",
        ])  # fmt: skip

    @property
    def tokens(self) -> bool:
        return self.kind in ("embedding", "lengths")

    @property
    def data_inputs(self) -> list[str]:
        return ["tokens", "lengths"] if self.kind == "lengths" else [self.data_input]

    @property
    def data_input(self) -> str:
        return "tokens" if self.tokens else "features"

    @property
    def states(self) -> dict[str, str]:
        """State input -> state output, as the graph names them."""
        if not self.takes_states:
            return {}
        return {"h0": "hn", "c0": "cn"} if self.cell == "LSTM" else {"h0": "hn"}

    @property
    def layers(self) -> int:
        return 2 if self.kind == "stacked" else 1

    @property
    def directions(self) -> int:
        return 2 if self.kind == "bidirectional" else 1

    @property
    def batch_axis(self) -> int:
        return 0 if self.batch_first else 1

    @property
    def sequence_axis(self) -> int:
        return 1 if self.batch_first else 0

    @property
    def streams(self) -> bool:
        """Whether sessions may carry its state: it returns it, and reads no future step."""
        return bool(self.states) and self.directions == 1

    def inputs(self, rows: int, steps: int, seed: int) -> dict[str, torch.Tensor]:
        """Random inputs in the graph's layout: data, each row's length, states."""
        generator = torch.Generator().manual_seed(seed)
        shape = (rows, steps) if self.batch_first else (steps, rows)
        if self.tokens:
            data = torch.randint(0, VOCAB, shape, generator=generator)
        else:
            data = torch.randn(*shape, FEATURES, generator=generator)
        inputs = {self.data_input: data}
        if self.kind == "lengths":
            inputs["lengths"] = torch.randint(1, steps + 1, (rows,), generator=generator)
        for name in self.states:
            shape = (self.layers * self.directions, rows, HIDDEN)
            inputs[name] = 0.5 * torch.randn(*shape, generator=generator)
        return inputs


class OwnModel(nn.Module):
    """The model of a Case; its inputs in the order the Case names them (data, states)."""

    def __init__(self, case: Case) -> None:
        super().__init__()
        self.case = case
        self.embed = nn.Embedding(VOCAB, FEATURES) if case.tokens else None
        self.rnn = getattr(nn, case.cell)(
            FEATURES, HIDDEN, num_layers=case.layers, batch_first=case.batch_first,
            bidirectional=case.directions == 2,
        )  # fmt: skip
        self.head = nn.Linear(HIDDEN * case.directions, CLASSES)

    def forward(self, *inputs: torch.Tensor):  # type: ignore[no-untyped-def]
        case = self.case
        data, given = inputs[: len(case.data_inputs)], inputs[len(case.data_inputs) :]
        x = data[0] if self.embed is None else self.embed(data[0])
        y, final = self.rnn(x, None if not given else given[0] if len(given) == 1 else given)
        if case.kind == "per-sequence":
            y = y.select(case.sequence_axis, -1)
        out = self.head(y)
        if case.kind == "lengths":  # zeros past each row's length
            steps = torch.arange(y.shape[case.sequence_axis]).unsqueeze(case.batch_axis)
            lengths = data[1].unsqueeze(case.sequence_axis)
            out = out * (steps < lengths).unsqueeze(-1).to(out.dtype)
        if not given:
            return out
        return (out, *final) if case.cell == "LSTM" else (out, final)


MATRIX = [
    Case(cell, dynamo, batch_first, states, kind)
    for cell, dynamo, batch_first, states, kind in itertools.product(
        CELLS, (True, False), (True, False), (True, False), KINDS
    )
]


@dataclass(frozen=True)
class MatrixExport:
    case: Case
    module: OwnModel  # PyTorch's answers, for the server's to equal
    path: Path  # its model.onnx


def export_matrix(folder: Path) -> None:
    """Every case of the matrix as `<folder>/<name>/model.onnx`, random weights (seeded)."""
    for index, export in enumerate(matrix_in(folder).values()):
        export.path.parent.mkdir(parents=True)
        export_case(export.case, export.module, export.path, seed=index)


def matrix_in(folder: Path) -> dict[str, MatrixExport]:
    """The matrix export_matrix writes into `folder`: each case's module made again with its
    seed (a few milliseconds), its weights those exported."""
    exported = {}
    for index, case in enumerate(MATRIX):
        torch.manual_seed(index)
        exported[case.name] = MatrixExport(
            case, OwnModel(case).eval(), model_path(folder, case.name)
        )
    return exported


def export_case(case: Case, module: OwnModel, path: Path, seed: int) -> None:
    """The case's module exported as the case says, its batch and sequence axes dynamic."""
    example = case.inputs(EXAMPLE_ROWS, EXAMPLE_STEPS, seed)
    sequence = {case.batch_axis: "batch", case.sequence_axis: "seq"}
    axes = {name: {1: "batch"} for name in [*case.states, *case.states.values()]}
    axes |= {case.data_input: sequence, "lengths": {0: "batch"}}
    axes["out"] = {0: "batch"} if case.kind == "per-sequence" else sequence
    outputs = ["out", *case.states.values()]
    axes = {name: axes[name] for name in [*example, *outputs]}  # the graph's tensors only
    _export(module, tuple(example.values()), path, list(example), outputs, axes, case.dynamo)


# The users' exports by name ------------------------------------------------------

# rnn-dynamo's model, a case of the matrix (_unrolled_rnn).
UNROLLED = Case("RNN", dynamo=True, batch_first=True, takes_states=True, kind="stacked")

# Each export: what it is, and the function that writes it.
GRU2 = ("features", "out", {"state_in": "state_out"})
PROJECTED_STATES = {"memory": "memory_out", "state_in": "state_out"}
EXPORTS: dict[str, tuple[Export, Callable[[Path], None]]] = {
    "gru2": (Export("gru2", 4, True, *GRU2), _gru),
    "gru2-dynamo": (Export("gru2-dynamo", 4, True, *GRU2), functools.partial(_gru, dynamo=True)),
    "rnn-dynamo": (
        Export("rnn-dynamo", FEATURES, True, "features", "out", dict(UNROLLED.states)),
        _unrolled_rnn,
    ),
    "lstm-seq-first": (
        Export("lstm-seq-first", 3, False, "x", "y", {"h0": "hn", "c0": "cn"}),
        _lstm,
    ),
    "bilstm": (
        Export("bilstm", 3, True, "x", "scores", {"h": "h_n", "c": "c_n"}, bidirectional=True),
        _bidirectional,
    ),
    "projected": (
        Export("projected", 5, True, "features", "logits", PROJECTED_STATES),
        _projected,
    ),
}


def export_all(folder: Path) -> None:
    """Every export as `<folder>/<name>/model.onnx`, with random weights (seeded)."""
    for index, (name, (_, write)) in enumerate(EXPORTS.items()):
        torch.manual_seed(index)
        path = model_path(folder, name)
        path.parent.mkdir(parents=True)
        write(path)


def exports_in(folder: Path) -> dict[str, tuple[Export, Path]]:
    """What export_all wrote into `folder`: name -> (Export, path of its model.onnx)."""
    return {name: (export, model_path(folder, name)) for name, (export, _) in EXPORTS.items()}


def model_path(folder: Path, name: str) -> Path:
    return folder / name / "model.onnx"
