"""Character tagging, the lesson's first model: "hello" -> "ohlol".

Embedding -> recurrent layer -> Linear on every step, so the output has the input's
length. The vocabulary is the lesson's four characters. Position 3 ("l" -> "l") and 4
("l" -> "o") read the same character, so a one-way model has to use its state to tell
them apart. The bidirectional variant sees the whole word and is not streamable.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from rnnserve.export.cells import make_cell, run_cell, zero_state
from rnnserve.export.config import TrainConfig
from rnnserve.export.tasks.base import Graph, Quality, SpecFields, random_tokens
from rnnserve.model.spec import cell_states

VOCAB = ["e", "h", "l", "o"]
PAIRS = [("hello", "ohlol")]
QUALITY_NAME = "hello_exact"
# An epoch is one step: the data is one pair.
PRESETS = {
    "default": dict(
        num_layers=1, hidden_size=8, epochs=200, batch_size=1, learning_rate=0.03,
        weight_decay=0.01, embedding_size=8,
    ),
    "tiny": dict(
        num_layers=1, hidden_size=8, epochs=200, batch_size=1, learning_rate=0.05,
        weight_decay=0.01, embedding_size=4,
    ),
}  # fmt: skip
CELL_PRESETS: dict[tuple[str, str], dict[str, object]] = {}
BIDIRECTIONAL = True


def encode(text: str) -> list[int]:
    return [VOCAB.index(ch) for ch in text]


def decode(ids: list[int]) -> str:
    return "".join(VOCAB[i] for i in ids)


class Tagger(nn.Module):
    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        directions = 2 if config.bidirectional else 1
        self.embedding = nn.Embedding(len(VOCAB), config.embedding_size)
        self.rnn = make_cell(
            config.cell,
            config.embedding_size,
            config.hidden_size,
            config.num_layers,
            config.bidirectional,
        )
        self.head = nn.Linear(config.hidden_size * directions, len(VOCAB))

    def forward(self, tokens: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        output, final = run_cell(self.rnn, self.embedding(tokens), state)
        return (self.head(output), *final)


def build_model(config: TrainConfig) -> Tagger:
    return Tagger(config)


def train(model: Tagger, config: TrainConfig, progress: bool) -> list[float]:
    sources = torch.tensor([encode(s) for s, _ in PAIRS])
    targets = torch.tensor([encode(t) for _, t in PAIRS])
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    losses: list[float] = []
    bar = tqdm(range(config.epochs), desc=config.name, disable=not progress, leave=False)
    for _ in bar:
        logits = model(sources, *zero_state(model.rnn, len(PAIRS)))[0]
        loss = nn.functional.cross_entropy(logits.reshape(-1, len(VOCAB)), targets.reshape(-1))
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return losses


@torch.no_grad()
def tag(model: Tagger, text: str) -> str:
    logits = model(torch.tensor([encode(text)]), *zero_state(model.rnn, 1))[0]
    return decode(logits.argmax(-1)[0].tolist())


def evaluate(model: Tagger, config: TrainConfig) -> Quality:
    """Fraction of the lesson's pairs tagged exactly (1.0: "hello" -> "ohlol")."""
    return Quality(sum(tag(model, s) == t for s, t in PAIRS) / len(PAIRS))


def quality_ok(quality: float) -> bool:
    # The lesson's one example must come out exactly, in every preset.
    return quality == 1.0


def graphs(model: Tagger, config: TrainConfig) -> list[Graph]:
    return [
        Graph(
            role="model",
            module=model,
            inputs=["tokens"],
            outputs=["logits"],
            states=cell_states(config.cell),
            sequence=True,
            one_way=not config.bidirectional,
            make_input=random_tokens(len(VOCAB)),
            hidden_size=config.hidden_size,
            state_rows=config.num_layers * (2 if config.bidirectional else 1),
        )
    ]


def spec_fields(config: TrainConfig) -> SpecFields:
    return SpecFields(
        input_size=len(VOCAB),
        output_size=len(VOCAB),
        vocab=VOCAB,
        num_directions=2 if config.bidirectional else 1,
        streamable=not config.bidirectional,
    )


def verify(model: nn.Module, folder: Path, config: TrainConfig) -> None:
    """Nothing beyond each graph's own checks."""


def save_plots(model: nn.Module, config: TrainConfig, run_dir: Path) -> None:
    """None beyond the loss curve."""
