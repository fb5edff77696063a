"""What a session holds: its identity and its recurrent state, one batch row of each
state tensor, keyed by stem ("h", and "c" for LSTM)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.errors import FailedPrecondition
from service.model_spec import ModelSpec

State = dict[str, np.ndarray]  # stem -> float32 (layers*directions, 1, hidden)
Layout = dict[str, tuple[int, ...]]  # stem -> the shape its tensor must have


@dataclass(frozen=True, slots=True)  # slots: 100,000 idle sessions hold 100,000 keys
class SessionKey:
    """A session is one sequence id of one model version; 7 and "7" are different ids."""

    model: str
    version: str
    sequence_id: int | str

    def describe(self) -> str:
        return f"sequence {self.sequence_id!r} for model {self.model} version {self.version}"


def state_layout(spec: ModelSpec) -> Layout:
    return {stem: (spec.state_rows, 1, spec.hidden_size) for stem in spec.state_names}


def zero_state(layout: Layout) -> State:
    return {stem: np.zeros(shape, dtype=np.float32) for stem, shape in layout.items()}


def layout_of(state: State) -> Layout:
    return {stem: tuple(array.shape) for stem, array in state.items()}


def check_layout(key: SessionKey, found: Layout, expected: Layout) -> None:
    """A stored state that no longer fits the model (re-exported with other sizes, or
    written by something else) must not reach ONNX Runtime."""
    if found != expected:
        raise FailedPrecondition(
            f"stored state of {key.describe()} does not fit the model: it has {found}, "
            f"the model expects {expected}; begin the sequence again with sequence_start=true"
        )
