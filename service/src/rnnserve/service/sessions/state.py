"""What a session holds: its identity, its recurrent state (one batch row of each state
tensor, keyed by state input name: "h0", and "c0" for LSTM) and its progress (the time steps
it has consumed and what a retry of its last step needs). Stores move the states of many
sessions at once, as rows of batch states held as `(before, rows, after)` (the default
models' `(layers*directions, rows, hidden)`; model/spec.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np

from rnnserve.service.errors import FailedPrecondition, Unavailable
from rnnserve.service.types import State

Layout = dict[str, tuple[int, ...]]  # state name -> the shape one session's tensor must have
# A step's outputs other than the states, by output name, each with its batch axis moved
# first and its batch row kept as a batch of one.
Answer = dict[str, np.ndarray]


class SessionKey(NamedTuple):
    """A session is one sequence id of one model version, held by one principal: two
    principals using the same id never meet. 7 and "7" are different ids.

    A tuple: hashed and compared in C (a step of 64 sessions looks keys up hundreds of
    times), and small (100,000 idle sessions hold 100,000 keys)."""

    principal: str
    model: str
    version: str
    sequence_id: int | str

    def describe(self) -> str:
        return f"sequence {self.sequence_id!r} for model {self.model} version {self.version}"


def session_keys(
    principal: str, model: str, version: str, ids: Sequence[int | str]
) -> list[SessionKey]:
    """The keys of many sessions of one model version (a multi-session request's rows),
    built as tuples directly: a NamedTuple's own __new__ is Python, a call per key."""
    new = tuple.__new__
    return [new(SessionKey, (principal, model, version, id_)) for id_ in ids]


@dataclass(slots=True)
class LastStep:
    """A session's last step, kept when it carried `sequence_offset`, so that a retry of it
    (the same offset, length and inputs) is answered again without being applied twice."""

    length: int  # time steps it consumed
    digest: bytes  # of its inputs and sequence flags
    # Its answer. Empty in the record of an ending step: that one is computed again from
    # the state it started from (a streamed end is decoded after the session is freed).
    answer: Answer


@dataclass(init=False, slots=True)
class Progress:
    """A session's step accounting, stored with its state by every store."""

    offset: int  # time steps consumed, its last step included
    last: LastStep | None
    # A record of a recently ended session (kept a while for a retry of its final step):
    # the state stored with it is the one that step started from.
    ended: bool
    # Of a step to store: the count it was applied on; for a start, the count it found
    # (ABSENT: no state; None: not looked at, a restart without an offset). A store that
    # other processes write too writes it only if the session still holds that count
    # (compare-and-set): two attempts at one step are applied once, and a start delayed
    # past its sequence's next steps (an attempt that reached another process late) does
    # not begin it again.
    prior: int | None

    # __init__ by hand: compiled, a dataclass's generated one runs as Python, at three times
    # the cost; made for every request.
    def __init__(
        self,
        offset: int = 0,
        last: LastStep | None = None,
        ended: bool = False,
        prior: int | None = None,
    ) -> None:
        self.offset = offset
        self.last = last
        self.ended = ended
        self.prior = prior


ABSENT = -1  # Progress.prior of a start that found no state: written only while there is none


@dataclass(frozen=True, slots=True)
class Conflict:
    """A step that a store refused to write, having found the session changed since the
    step loaded it: another attempt at the step, or another step, was written first
    (`offset`: the count the store holds; None when the session holds no state any more),
    or (`unsure`) an earlier step's outcome is unknown and the step carries no offset."""

    offset: int | None
    unsure: bool = False


@dataclass(frozen=True, slots=True)
class Gone:
    """A session that holds no state any more, remembered a while (a tombstone, as the
    record of a client's end is): it expired, idle too long, or its state was lost to a
    server fault (the process holding it died, or the store lost its data). `reason` says
    which, for the client."""

    why: Literal["expired", "lost"]
    reason: str


TOMBSTONE_S = 60.0  # the least time a tombstone is kept (the idle timeout, when longer)


def tombstone_s(idle_timeout_s: float) -> float:
    """How long a tombstone is kept: a client back from a long pause still hears why."""
    return max(idle_timeout_s, TOMBSTONE_S)


def expired(idle_timeout_s: float) -> Gone:
    return Gone("expired", f"it expired after {idle_timeout_s:g} s idle (session_idle_timeout_s)")


# What loading one session gave: its progress (its state copied; `ended` for the record of
# a client's end), a tombstone (Gone), None (no such session known), why its stored state
# cannot serve, or (Unavailable) that the store cannot tell yet.
Loaded = Progress | FailedPrecondition | Unavailable | Gone | None


def row_layout(state: State) -> Layout:
    """The layout of one row of a batch state."""
    return {name: (array.shape[0], 1, *array.shape[2:]) for name, array in state.items()}


def fits(layout: Layout, state: State) -> bool:
    """Whether one row of `state` has `layout`: row_layout(state) == layout, without
    building it (stores ask on every call)."""
    if len(layout) != len(state):
        return False
    for name, shape in layout.items():
        array = state.get(name)
        if array is None:
            return False
        held: tuple[int, ...] = array.shape
        if len(held) != len(shape):
            return False
        for axis, size in enumerate(shape):  # sizes compared as ints, no slices built
            if axis != 1 and held[axis] != size:
                return False
    return True


def check_layout(key: SessionKey, found: Layout, expected: Layout) -> None:
    """A stored state that no longer fits the model (re-exported with other sizes, or
    written by something else) must not reach ONNX Runtime."""
    if found != expected:
        raise misfit(key, found, expected)


def misfit(key: SessionKey, found: Layout, expected: Layout) -> FailedPrecondition:
    """The refusal of a stored state of layout `found` where the model expects `expected`."""
    return FailedPrecondition(
        f"stored state of {key.describe()} does not fit the model: it has {found}, "
        f"the model expects {expected}; begin the sequence again with sequence_start=true"
    )
