"""What every task hands to the generic exporter and verifier."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

# (batch, seq, generator) -> the graph's first input; seq is ignored by step graphs.
InputMaker = Callable[[int, int, torch.Generator], Tensor]


@dataclass
class Graph:
    """One ONNX graph: a module whose forward takes (first input, *state) and returns
    (*other outputs, *state). Other outputs share the first input's leading axes:
    (batch, seq) for sequence graphs, (batch,) for step graphs."""

    role: str  # "model", "encoder" or "decoder"
    module: nn.Module
    input_names: list[str]
    output_names: list[str]
    num_states: int
    sequence: bool  # first input is (batch, seq, ...); a step graph's is (batch,)
    one_way: bool  # feeding a sequence in chunks with the state carried must change nothing
    make_input: InputMaker
    hidden_size: int
    state_rows: int

    @property
    def file_name(self) -> str:
        return f"{self.role}.onnx"

    def random_state(self, batch: int, generator: torch.Generator) -> tuple[Tensor, ...]:
        shape = (self.state_rows, batch, self.hidden_size)
        return tuple(torch.randn(shape, generator=generator) * 0.5 for _ in range(self.num_states))


def state_names(num_states: int, suffix: str) -> list[str]:
    return ["h" + suffix, "c" + suffix][:num_states]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def random_tokens(vocab_size: int, first: int = 0) -> InputMaker:
    """Token ids drawn uniformly from [first, vocab_size)."""

    def make(batch: int, seq: int, generator: torch.Generator) -> Tensor:
        return torch.randint(first, vocab_size, (batch, seq), generator=generator)

    return make
