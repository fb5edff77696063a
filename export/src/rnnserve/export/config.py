"""What to train: one `TrainConfig` per model, filled from its task's preset plus overrides.

Presets (each task module's PRESETS): "default" meets the quality bars in docs/models.md
and builds the nine default models in a few minutes on two CPU cores; "tiny" is for tests:
small and brief, yet the tagger still learns hello -> ohlol and every export check still
runs. Weight decay keeps the recurrences from amplifying rounding over the thousand-step
parity and chunk checks, far longer than anything these models were trained on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, TypeGuard

from rnnserve.export.tasks import NAMES, task_module
from rnnserve.model.spec import Cell
from rnnserve.protocol.errors import UsageError

CELL_NAMES: tuple[Cell, ...] = ("rnn", "lstm", "gru")
DEFAULT_NAMES = tuple(f"{task}-{cell}" for task in NAMES for cell in CELL_NAMES)


@dataclass(frozen=True)
class TrainConfig:
    task: str
    cell: Cell
    num_layers: int
    hidden_size: int
    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float = 0.0
    embedding_size: int = 16  # character models only
    bidirectional: bool = False  # tagger only
    seed: int = 0

    @property
    def name(self) -> str:
        return f"{self.task}-{self.cell}" + ("-bi" if self.bidirectional else "")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESET_NAMES = ("default", "tiny")


def is_cell(name: str) -> TypeGuard[Cell]:
    return name in CELL_NAMES


def parse_name(name: str) -> tuple[str, str, bool]:
    """Split a model name "<task>-<cell>[-bi]" into (task, cell, bidirectional)."""
    parts = name.split("-")
    bidirectional = parts[-1] == "bi"
    if bidirectional:
        parts = parts[:-1]
    if len(parts) != 2:
        raise UsageError(f"model name {name!r} is not <task>-<cell>[-bi]")
    return parts[0], parts[1], bidirectional


def make_config(
    task: str,
    cell: str,
    preset: str = "default",
    seed: int = 0,
    bidirectional: bool = False,
    **overrides: Any,
) -> TrainConfig:
    """A validated config; `overrides` with value None are ignored."""
    module = task_module(task)
    if not is_cell(cell):
        raise UsageError(f"unknown cell {cell!r}: expected one of {', '.join(CELL_NAMES)}")
    if preset not in PRESET_NAMES:
        raise UsageError(f"unknown preset {preset!r}: expected one of {', '.join(PRESET_NAMES)}")
    if bidirectional and not module.BIDIRECTIONAL:
        raise UsageError(f"task {task} has no bidirectional variant")
    settings = module.PRESETS[preset] | module.CELL_PRESETS.get((preset, cell), {})
    config = TrainConfig(task=task, cell=cell, seed=seed, bidirectional=bidirectional, **settings)
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    for field in ("num_layers", "hidden_size", "epochs", "batch_size", "embedding_size"):
        if getattr(config, field) < 1:
            raise UsageError(f"{field} must be at least 1, got {getattr(config, field)}")
    if config.weight_decay < 0:
        raise UsageError(f"weight_decay must not be negative, got {config.weight_decay}")
    if config.learning_rate <= 0:
        raise UsageError(f"learning_rate must be positive, got {config.learning_rate}")
    return config


def config_for_name(
    name: str, preset: str = "default", seed: int = 0, **overrides: Any
) -> TrainConfig:
    task, cell, bidirectional = parse_name(name)
    return make_config(task, cell, preset, seed, bidirectional, **overrides)
