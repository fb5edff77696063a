"""What every task hands to the generic trainer, exporter and verifier."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, Required, TypedDict

import torch
from torch import Tensor, nn

from rnnserve.model.spec import StatePair

if TYPE_CHECKING:
    from rnnserve.export.config import TrainConfig

# (batch, seq, generator) -> the graph's first input; seq is ignored by step graphs.
InputMaker = Callable[[int, int, torch.Generator], Tensor]


class SpecFields(TypedDict, total=False):
    """What a task adds to its models' ModelSpec (model/spec.py) beyond what every export
    writes."""

    input_size: int
    output_size: int
    vocab: list[str]
    target_vocab: list[str]
    pad_id: int
    bos_id: int
    eos_id: int
    max_output_length: int
    fold_case: bool
    num_directions: Literal[1, 2]
    streamable: Required[bool]


@dataclass(frozen=True)
class Quality:
    """What a task's `evaluate` measured: its figure (QUALITY_NAME) over the held-out set,
    and the same figure on each part of it where the task tells parts apart (seq2seq: each
    date format), by part name."""

    value: float
    parts: dict[str, float] = field(default_factory=dict)


@dataclass
class Graph:
    """One ONNX graph: a module whose forward takes (first input, *state inputs) and returns
    (*outputs, *state outputs). Outputs share the first input's leading axes: (batch, seq)
    for sequence graphs, (batch,) for step graphs."""

    role: str  # "model", "encoder" or "decoder"
    module: nn.Module
    inputs: list[str]  # the first input's name, in a list
    outputs: list[str]  # outputs other than states
    states: list[StatePair]  # as the server carries them (model/spec.py)
    sequence: bool  # first input is (batch, seq, ...); a step graph's is (batch,)
    one_way: bool  # feeding a sequence in chunks with the state carried must change nothing
    make_input: InputMaker
    hidden_size: int
    state_rows: int

    @property
    def file_name(self) -> str:
        return f"{self.role}.onnx"

    @property
    def input_names(self) -> list[str]:
        return [*self.inputs, *(pair.input for pair in self.states)]

    @property
    def output_names(self) -> list[str]:
        return [*self.outputs, *(pair.output for pair in self.states)]

    @property
    def num_states(self) -> int:
        return len(self.states)

    def random_state(self, batch: int, generator: torch.Generator) -> tuple[Tensor, ...]:
        shape = (self.state_rows, batch, self.hidden_size)
        return tuple(torch.randn(shape, generator=generator) * 0.5 for _ in range(self.num_states))


class ExportTask(Protocol):
    """A module of export/tasks/: how one task's models are trained, checked and exported."""

    QUALITY_NAME: str  # what `evaluate` measures, as the export's metadata names it
    # Training settings (TrainConfig fields) per preset ("default", "tiny"), and the
    # overrides for one (preset, cell) that needs other settings than its task's.
    PRESETS: dict[str, dict[str, Any]]
    CELL_PRESETS: dict[tuple[str, str], dict[str, Any]]
    BIDIRECTIONAL: bool  # whether the task has a bidirectional variant

    def build_model(self, config: TrainConfig) -> nn.Module: ...

    def train(self, model: nn.Module, config: TrainConfig, progress: bool) -> list[float]: ...

    def evaluate(self, model: nn.Module, config: TrainConfig) -> Quality: ...

    def quality_ok(self, quality: float) -> bool: ...

    def graphs(self, model: nn.Module, config: TrainConfig) -> list[Graph]: ...

    def spec_fields(self, config: TrainConfig) -> SpecFields: ...

    def verify(self, model: nn.Module, folder: Path, config: TrainConfig) -> None:
        """Checks of the exported graphs beyond each graph's own (export/verify.py)."""
        ...

    def save_plots(self, model: nn.Module, config: TrainConfig, run_dir: Path) -> None:
        """Plots of a training run beyond its loss curve."""
        ...


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def random_tokens(vocab_size: int, first: int = 0) -> InputMaker:
    """Token ids drawn uniformly from [first, vocab_size)."""

    def make(batch: int, seq: int, generator: torch.Generator) -> Tensor:
        return torch.randint(first, vocab_size, (batch, seq), generator=generator)

    return make
