"""The three recurrent cells behind one calling convention.

nn.LSTM carries two state tensors (h, c) and nn.RNN / nn.GRU carry one (h). Every model
here passes state as a flat tuple so the same code trains, exports and verifies all three.
State tensors are always (layers*directions, batch, hidden), whatever `batch_first` says.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn


class CellClass(Protocol):
    """nn.RNN, nn.LSTM and nn.GRU as built here (nn.RNNBase's own takes a mode first)."""

    def __call__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int,
        *,
        batch_first: bool,
        bidirectional: bool,
    ) -> nn.RNNBase: ...


CELLS: dict[str, CellClass] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}

State = tuple[Tensor, ...]


def make_cell(
    cell: str, input_size: int, hidden_size: int, num_layers: int, bidirectional: bool = False
) -> nn.RNNBase:
    return CELLS[cell](
        input_size, hidden_size, num_layers, batch_first=True, bidirectional=bidirectional
    )


def run_cell(rnn: nn.RNNBase, x: Tensor, state: State) -> tuple[Tensor, State]:
    """Run `rnn` over x (batch, seq, features) from `state`; returns (output, final state)."""
    if isinstance(rnn, nn.LSTM):
        output, (h, c) = rnn(x, (state[0], state[1]))
        return output, (h, c)
    output, h = rnn(x, state[0])
    return output, (h,)


def zero_state(rnn: nn.RNNBase, batch: int) -> State:
    rows = rnn.num_layers * (2 if rnn.bidirectional else 1)
    shape = (rows, batch, rnn.hidden_size)
    count = 2 if isinstance(rnn, nn.LSTM) else 1
    return tuple(torch.zeros(shape) for _ in range(count))


def detach(state: State) -> State:
    return tuple(s.detach() for s in state)
