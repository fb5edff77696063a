"""Training one model from its config, and the run folder it leaves: runs/<name>/ holds
checkpoint.pt, loss.png and, for sine, stream.png (target against prediction)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from rnnserve.export.config import TrainConfig
from rnnserve.export.tasks import task_module
from rnnserve.protocol.errors import UsageError

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainedModel:
    config: TrainConfig
    model: nn.Module
    losses: list[float]
    quality: float
    train_seconds: float
    quality_parts: dict[str, float] = field(default_factory=dict)  # Quality.parts

    @property
    def quality_name(self) -> str:
        return task_module(self.config.task).QUALITY_NAME


def train_model(config: TrainConfig, progress: bool = False) -> TrainedModel:
    task = task_module(config.task)
    torch.manual_seed(config.seed)
    model = task.build_model(config)
    started = time.perf_counter()
    losses = task.train(model.train(), config, progress)
    seconds = time.perf_counter() - started
    quality = task.evaluate(model, config)
    return TrainedModel(config, model.eval(), losses, quality.value, seconds, quality.parts)


def save_run(trained: TrainedModel, run_dir: Path) -> None:
    from rnnserve.export.plots import plot_loss  # matplotlib only when runs are kept

    run_dir.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "config": trained.config.to_dict(),
            "state_dict": trained.model.state_dict(),
            "losses": trained.losses,
            "quality": trained.quality,
            "quality_parts": trained.quality_parts,
            "train_seconds": trained.train_seconds,
        },
        run_dir / CHECKPOINT,
    )
    plot_loss(trained.losses, run_dir / "loss.png", trained.config.name)
    task_module(trained.config.task).save_plots(trained.model, trained.config, run_dir)


def load_run(path: Path) -> TrainedModel:
    """A trained model back from a checkpoint file (or the run folder holding one)."""
    file = path / CHECKPOINT if path.is_dir() else path
    try:
        saved = torch.load(file, weights_only=True)
    except (OSError, RuntimeError) as error:
        raise UsageError(f"cannot read checkpoint {file}: {error}") from None
    config = TrainConfig(**saved["config"])
    model = task_module(config.task).build_model(config)
    model.load_state_dict(saved["state_dict"])
    return TrainedModel(
        config,
        model.eval(),
        saved["losses"],
        saved["quality"],
        saved["train_seconds"],
        saved.get("quality_parts", {}),  # absent from checkpoints saved before parts
    )
