"""PNG figures of a training run (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported: no display on build machines
import matplotlib.pyplot as plt


def plot_loss(losses: Sequence[float], path: Path, title: str) -> None:
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.plot(losses)
    axes.set(title=f"{title}: training loss", xlabel="step", ylabel="loss", yscale="log")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_stream(
    target: Sequence[float], prediction: Sequence[float], path: Path, title: str
) -> None:
    figure, axes = plt.subplots(figsize=(10, 4))
    axes.plot(target, label="target cos(t)")
    axes.plot(prediction, label="prediction", linestyle="--")
    axes.set(title=f"{title}: held-out stream", xlabel="step", ylabel="value")
    axes.legend(loc="upper right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
