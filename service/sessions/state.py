"""What a session holds: its identity and its recurrent state, one batch row of each
state tensor, keyed by state input name ("h0", and "c0" for LSTM). Stores move the states
of many sessions at once, as rows of batch states `(layers*directions, rows, hidden)`."""

from __future__ import annotations

from typing import NamedTuple

from rnnserve.service.errors import FailedPrecondition
from rnnserve.service.types import State

Layout = dict[str, tuple[int, ...]]  # state name -> the shape one session's tensor must have
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


def row_layout(state: State) -> Layout:
    """The layout of one row of a batch state."""
    return {name: (array.shape[0], 1, *array.shape[2:]) for name, array in state.items()}


def check_layout(key: SessionKey, found: Layout, expected: Layout) -> None:
    """A stored state that no longer fits the model (re-exported with other sizes, or
    written by something else) must not reach ONNX Runtime."""
    if found != expected:
        raise FailedPrecondition(
            f"stored state of {key.describe()} does not fit the model: it has {found}, "
            f"the model expects {expected}; begin the sequence again with sequence_start=true"
        )
