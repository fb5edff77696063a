"""What a session holds: its identity and its recurrent state, one batch row of each
state tensor, keyed by stem ("h", and "c" for LSTM). Stores move the states of many
sessions at once, as rows of batch states `(layers*directions, rows, hidden)`."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from service.errors import FailedPrecondition

State = dict[str, np.ndarray]  # stem -> float32 (layers*directions, rows, hidden)
Layout = dict[str, tuple[int, ...]]  # stem -> the shape one session's tensor must have
# What loading one session's state gave: True (copied), False (no such session), or why
# its stored state cannot serve.
Loaded = bool | FailedPrecondition


class SessionKey(NamedTuple):
    """A session is one sequence id of one model version; 7 and "7" are different ids.

    A tuple: hashed and compared in C (a step of 64 sessions looks keys up hundreds of
    times), and small (100,000 idle sessions hold 100,000 keys)."""

    model: str
    version: str
    sequence_id: int | str

    def describe(self) -> str:
        return f"sequence {self.sequence_id!r} for model {self.model} version {self.version}"


def zero_state(layout: Layout) -> State:
    return {stem: np.zeros(shape, dtype=np.float32) for stem, shape in layout.items()}


def row_layout(state: State) -> Layout:
    """The layout of one row of a batch state."""
    return {stem: (array.shape[0], 1, *array.shape[2:]) for stem, array in state.items()}


def check_layout(key: SessionKey, found: Layout, expected: Layout) -> None:
    """A stored state that no longer fits the model (re-exported with other sizes, or
    written by something else) must not reach ONNX Runtime."""
    if found != expected:
        raise FailedPrecondition(
            f"stored state of {key.describe()} does not fit the model: it has {found}, "
            f"the model expects {expected}; begin the sequence again with sequence_start=true"
        )
