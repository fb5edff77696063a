"""A session as one Redis value, in both Redis stores: a small JSON header (principal,
model, version, id, dtype, state names and shapes, its step count and, when its last step
carried `sequence_offset`, that step's length, digest and answer layout), the raw float32
state and the answer's raw tensors; or a tombstone, the record of a session that expired
or was lost."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from rnnserve.protocol import codec
from rnnserve.service.errors import FailedPrecondition
from rnnserve.service.sessions.redis.client import Command
from rnnserve.service.sessions.redis.keys import Keyspace, member
from rnnserve.service.sessions.state import (
    Answer,
    Gone,
    LastStep,
    Loaded,
    Progress,
    SessionKey,
    check_layout,
    row_layout,
)
from rnnserve.service.types import State

_HEADER_LENGTH = struct.Struct("<I")
_DTYPE = np.dtype("<f4")


def one_row(state: State, row: int) -> State:
    return {name: array[:, row : row + 1] for name, array in state.items()}


def write_records(
    space: Keyspace,
    kind: str,
    keys: Sequence[SessionKey],
    state: State,
    rows: Sequence[int],
    progress: Sequence[Progress],
    keep_s: float,
    *,
    ended: bool = False,
) -> list[Command]:
    """The commands that store each session's record (its row of `state` and its progress)
    as its `kind` key (`state` for live sessions, `ended` for ended ones), kept for
    `keep_s`. The record of an end keeps its state only when its final step carried an
    offset: for a retry of that step."""
    return [
        Command.of(
            "SET",
            space.key(kind, member(key)),
            encode_record(key, {} if ended and one.last is None else one_row(state, row), one),
            "PX",
            round(keep_s * 1000),
        )
        for key, row, one in zip(keys, rows, progress, strict=True)
    ]


def load_record(
    key: SessionKey, blob: bytes | None, into: State, row: int, *, ended: bool = False
) -> Loaded:
    """A stored record copied into `row` of `into`: its progress (None without a record,
    FailedPrecondition when it cannot serve), or the tombstone it is."""
    if blob is None:
        return None
    try:
        decoded = decode_record(key, blob)
        if isinstance(decoded, Gone):
            return decoded
        state, progress = decoded
        if state or not ended:  # the record of an end keeps a state only for a retry
            check_layout(key, row_layout(state), row_layout(into))
    except FailedPrecondition as error:
        return error
    for name, array in state.items():
        into[name][:, row] = array[:, 0]
    progress.ended = ended
    return progress


def encode_gone(gone: Gone) -> bytes:
    """A tombstone (an expired or lost session's record) as one Redis value."""
    header = json.dumps({"gone": gone.why, "reason": gone.reason}).encode()
    return _HEADER_LENGTH.pack(len(header)) + header


def encode_record(key: SessionKey, state: State, progress: Progress) -> bytes:
    """A session's one-row state and progress as one Redis value."""
    header: dict[str, Any] = {
        "principal": key.principal,
        "model": key.model,
        "version": key.version,
        "sequence_id": key.sequence_id,
        "dtype": _DTYPE.str,
        "names": list(state),
        "shapes": [list(array.shape) for array in state.values()],
        "offset": progress.offset,
    }
    arrays = (np.ascontiguousarray(array, dtype=_DTYPE) for array in state.values())
    parts = [array.tobytes() for array in arrays]
    if progress.last is not None:
        answer = [
            (name, _datatype(array), list(array.shape), codec.raw_of(_datatype(array), array))
            for name, array in progress.last.answer.items()
        ]
        header["last"] = {
            "length": progress.last.length,
            "digest": progress.last.digest.hex(),
            "answer": [[name, datatype, shape, len(raw)] for name, datatype, shape, raw in answer],
        }
        parts += [raw for *_, raw in answer]
    encoded = json.dumps(header).encode()
    return _HEADER_LENGTH.pack(len(encoded)) + encoded + b"".join(parts)


def decode_record(key: SessionKey, blob: bytes) -> tuple[State, Progress] | Gone:
    """The one-row state and progress `encode_record` wrote, or the tombstone `encode_gone`
    wrote; FailedPrecondition when it was written for another session or in another dtype."""
    (length,) = _HEADER_LENGTH.unpack_from(blob)
    header = json.loads(blob[_HEADER_LENGTH.size : _HEADER_LENGTH.size + length])
    if "gone" in header:
        return Gone(header["gone"], header["reason"])
    owner = SessionKey(
        header["principal"], header["model"], header["version"], header["sequence_id"]
    )
    if owner != key or header["dtype"] != _DTYPE.str:
        raise FailedPrecondition(
            f"stored state of {key.describe()} belongs to {owner.describe()} "
            f"with dtype {header['dtype']}; begin the sequence again with sequence_start=true"
        )
    state: State = {}
    offset = _HEADER_LENGTH.size + length
    for name, shape in zip(header["names"], header["shapes"], strict=True):
        count = math.prod(shape)
        state[name] = np.frombuffer(blob, _DTYPE, count, offset).reshape(shape)
        offset += count * _DTYPE.itemsize
    last = header.get("last")
    if last is None:
        return state, Progress(header["offset"])
    answer: Answer = {}
    for name, datatype, shape, size in last["answer"]:
        raw = blob[offset : offset + size]
        answer[name] = codec.array_from_raw(name, datatype, shape, raw)
        offset += size
    step = LastStep(last["length"], bytes.fromhex(last["digest"]), answer)
    return state, Progress(header["offset"], step)


def _datatype(array: np.ndarray) -> str:
    return "BYTES" if array.dtype == object else codec.DATATYPE_OF_DTYPE[array.dtype]
