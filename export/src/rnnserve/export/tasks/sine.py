"""Sequence regression, the lesson's sine wave: sin(t) in, cos(t) out, one prediction per step.

cos(t) is not a function of sin(t) alone (the same sine value occurs rising and falling),
so the model must use its state. Training walks along long streams in windows and carries
the state, detached, from one window into the next, as the lesson does. Quality is the MSE
over a held-out stream of 2,000 steps from a zero state, after a warm-up of 20 steps (at
the first step the direction of the wave cannot be known).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from rnnserve.export.cells import detach, make_cell, run_cell, zero_state
from rnnserve.export.config import TrainConfig
from rnnserve.export.tasks.base import Graph, Quality, SpecFields
from rnnserve.model.spec import cell_states

DT = 0.1  # time step: about 63 steps per period
STREAM_STEPS = 1000
WINDOW = 50
EVAL_STEPS = 2000
WARM_UP = 20
QUALITY_NAME = "heldout_mse"
# An epoch is one pass over the training streams.
PRESETS = {
    "default": dict(num_layers=1, hidden_size=32, epochs=12, batch_size=16, learning_rate=1e-2),
    "tiny": dict(num_layers=1, hidden_size=8, epochs=2, batch_size=4, learning_rate=1e-2),
}
CELL_PRESETS: dict[tuple[str, str], dict[str, object]] = {}
BIDIRECTIONAL = False


def waves(phases: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """sin and cos over `steps` steps from each phase: two (batch, steps, 1) tensors."""
    t = phases[:, None] + DT * torch.arange(steps)[None, :]
    return torch.sin(t).unsqueeze(-1), torch.cos(t).unsqueeze(-1)


class SineModel(nn.Module):
    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        self.rnn = make_cell(config.cell, 1, config.hidden_size, config.num_layers)
        self.head = nn.Linear(config.hidden_size, 1)

    def forward(self, x: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        output, final = run_cell(self.rnn, x, state)
        return (self.head(output), *final)


def build_model(config: TrainConfig) -> SineModel:
    return SineModel(config)


def train(model: SineModel, config: TrainConfig, progress: bool) -> list[float]:
    generator = torch.Generator().manual_seed(config.seed)
    windows = STREAM_STEPS // WINDOW
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, config.learning_rate, config.epochs * windows
    )
    losses: list[float] = []
    bar = tqdm(range(config.epochs), desc=config.name, disable=not progress, leave=False)
    for _ in bar:
        phases = torch.rand(config.batch_size, generator=generator) * 2 * math.pi
        x, y = waves(phases, STREAM_STEPS)
        state = zero_state(model.rnn, config.batch_size)
        for w in range(windows):
            span = slice(w * WINDOW, (w + 1) * WINDOW)
            prediction, *state = model(x[:, span], *state)
            state = detach(tuple(state))
            loss = nn.functional.mse_loss(prediction, y[:, span])
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.2e}")
    return losses


@torch.no_grad()
def predict_stream(model: SineModel, seed: int, steps: int = EVAL_STEPS) -> tuple[Tensor, Tensor]:
    """Target and prediction (steps,) over one held-out stream, from a zero state."""
    phase = torch.rand(1, generator=torch.Generator().manual_seed(seed + 10_000)) * 2 * math.pi
    x, y = waves(phase, steps)
    prediction = model(x, *zero_state(model.rnn, 1))[0]
    return y[0, :, 0], prediction[0, :, 0]


def evaluate(model: SineModel, config: TrainConfig) -> Quality:
    target, prediction = predict_stream(model, config.seed)
    return Quality(nn.functional.mse_loss(prediction[WARM_UP:], target[WARM_UP:]).item())


def quality_ok(quality: float) -> bool:
    return True  # measured and reported; the bar applies to the default preset's LSTM/GRU


def _sine_input(batch: int, seq: int, generator: torch.Generator) -> Tensor:
    phases = torch.rand(batch, generator=generator) * 2 * math.pi
    return waves(phases, seq)[0]


def graphs(model: SineModel, config: TrainConfig) -> list[Graph]:
    return [
        Graph(
            role="model",
            module=model,
            inputs=["x"],
            outputs=["y"],
            states=cell_states(config.cell),
            sequence=True,
            one_way=True,
            make_input=_sine_input,
            hidden_size=config.hidden_size,
            state_rows=config.num_layers,
        )
    ]


def spec_fields(config: TrainConfig) -> SpecFields:
    return SpecFields(input_size=1, output_size=1, streamable=True)


def verify(model: nn.Module, folder: Path, config: TrainConfig) -> None:
    """Nothing beyond each graph's own checks."""


def save_plots(model: SineModel, config: TrainConfig, run_dir: Path) -> None:
    """The held-out stream: target against prediction (stream.png)."""
    from rnnserve.export.plots import plot_stream  # matplotlib only when runs are kept

    target, prediction = predict_stream(model, config.seed)
    plot_stream(target.tolist(), prediction.tolist(), run_dir / "stream.png", config.name)
