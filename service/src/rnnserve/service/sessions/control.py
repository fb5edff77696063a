"""Multi-session requests: control tensors that make each batch row one step of its own
session.

A request may carry `sequence_id` (UINT64, INT64 or BYTES), `sequence_start` /
`sequence_end` (BOOL) and `sequence_offset` (INT64: the time steps each row's sequence
consumed before it), each `[batch]` (or Triton's `[batch, 1]`), as inputs. Row i is then
one step of session `sequence_id[i]`: the rows run together while each carries its own
state. Malformed control tensors refuse the whole request; a row whose session cannot step
(unknown, expired, over the session limit, at another offset) fails alone, and the
response's `sequence_error` output says which rows failed and why; its `sequence_offset`
output gives each row's sequence's time steps after the request.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from rnnserve.protocol.sequences import (
    CONTROL_DATATYPES,
    CONTROL_OUTPUT_DATATYPES,
    FAILED_ROWS,
    SEQUENCE_END,
    SEQUENCE_ERROR,
    SEQUENCE_ID,
    SEQUENCE_OFFSET,
    SEQUENCE_START,
)
from rnnserve.service.errors import InvalidArgument
from rnnserve.service.sessions.parameters import UINT64_MAX, check_offset
from rnnserve.service.types import InferRequest, Tensor, TensorMetadata

__all__ = ["FAILED_ROWS", "SEQUENCE_END", "SEQUENCE_ERROR", "SEQUENCE_ID", "SEQUENCE_START"]

CONTROL_NAMES = tuple(CONTROL_DATATYPES)
CONTROL_OUTPUTS = tuple(CONTROL_OUTPUT_DATATYPES)
ID_DATATYPES = ("UINT64", "INT64", "BYTES")

# The control inputs of models that take multi-session requests (ModelMetadata parameters
# name them; Triton's ModelConfig describes them as sequence_batching control inputs).
CONTROL_INPUTS = [
    TensorMetadata(name, datatype, (-1,), optional=True)
    for name, datatype in CONTROL_DATATYPES.items()
]


@dataclass(frozen=True)
class SessionRows:
    """One session step per batch row."""

    ids: list[int | str]
    starts: list[bool]
    ends: list[bool]
    offsets: list[int] | None = None  # sequence_offset per row, when the request carries it

    @property
    def rows(self) -> int:
        return len(self.ids)

    @property
    def continuing(self) -> bool:
        """Whether every row continues its session without an offset (no row starts or
        ends): a steady stream's request, `SessionManager.continue_rows`'."""
        return self.offsets is None and not any(self.starts) and not any(self.ends)


def split_control(request: InferRequest) -> tuple[SessionRows | None, InferRequest]:
    """The request's session rows (None when it carries no control tensor) and the request
    without its control tensors and without the control outputs among its outputs, as the
    task sees it."""
    controls = {tensor.name: tensor for tensor in request.inputs if tensor.name in CONTROL_NAMES}
    if not controls:
        return None, request
    if SEQUENCE_ID not in controls:
        raise InvalidArgument(
            f"inputs {sorted(controls)} need input '{SEQUENCE_ID}' naming each row's session"
        )
    if any(name in request.parameters for name in CONTROL_NAMES):
        raise InvalidArgument(
            "the request carries both sequence parameters and control tensors; expected one: "
            "parameters for a request of one session, tensors for one step per row"
        )
    names = [tensor.name for tensor in request.inputs if tensor.name in CONTROL_NAMES]
    if len(names) != len(set(names)):
        raise InvalidArgument(f"a control input appears more than once: {names}")
    ids = _ids(controls[SEQUENCE_ID])
    starts = _flags(controls.get(SEQUENCE_START), len(ids))
    rows = SessionRows(
        ids,
        starts,
        _flags(controls.get(SEQUENCE_END), len(ids)),
        _offsets(controls.get(SEQUENCE_OFFSET), len(ids)),
    )
    # Built field by field: dataclasses.replace is interpreted Python on every request.
    task_request = InferRequest(
        model_name=request.model_name,
        model_version=request.model_version,
        id=request.id,
        inputs=[tensor for tensor in request.inputs if tensor.name not in CONTROL_NAMES],
        outputs=[name for name in request.outputs if name not in CONTROL_OUTPUTS],
        parameters=request.parameters,
        principal=request.principal,
    )
    return rows, task_request


def _values(tensor: Tensor, datatypes: tuple[str, ...]) -> list[Any]:
    """A control tensor's values, one per row: shape [batch] or [batch, 1]."""
    if tensor.datatype not in datatypes:
        raise InvalidArgument(
            f"input '{tensor.name}' has datatype {tensor.datatype}; expected "
            f"{' or '.join(datatypes)}"
        )
    shape = tuple(tensor.shape)
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1) or shape[0] < 1:
        raise InvalidArgument(
            f"input '{tensor.name}' has shape {list(shape)}; expected [batch] or [batch, 1] "
            "with batch at least 1"
        )
    values = np.asarray(tensor.data).reshape(-1).tolist()
    if len(values) != shape[0]:
        raise InvalidArgument(
            f"input '{tensor.name}' holds {len(values)} values; its shape {list(shape)} "
            f"needs {shape[0]}"
        )
    return values


def _ids(tensor: Tensor) -> list[int | str]:
    values = _values(tensor, ID_DATATYPES)
    # Numeric ids (most requests) are checked at once; row by row only to name the row at
    # fault.
    if tensor.datatype != "BYTES" and min(values) > 0 and len(set(values)) == len(values):
        return values
    ids: list[int | str] = []
    for row, value in enumerate(values):
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidArgument(
                    f"{SEQUENCE_ID}[{row}] is not valid UTF-8; expected a string id"
                ) from None
        if value in (0, ""):
            raise InvalidArgument(
                f"{SEQUENCE_ID}[{row}] is {value!r}, which names no session; expected a "
                "non-zero id (or non-empty string) for every row"
            )
        if isinstance(value, int) and not 0 < value <= UINT64_MAX:
            raise InvalidArgument(
                f"{SEQUENCE_ID}[{row}] is {value}; expected an id from 1 to {UINT64_MAX}"
            )
        ids.append(value)
    repeated = sorted((str(i) for i, n in Counter(ids).items() if n > 1))
    if repeated:
        raise InvalidArgument(
            f"input '{SEQUENCE_ID}' names sessions {', '.join(repeated)} more than once; "
            "expected each session at most once per request (one request cannot order the "
            "steps of one session)"
        )
    return ids


def _flags(tensor: Tensor | None, rows: int) -> list[bool]:
    if tensor is None:
        return [False] * rows
    flags = [bool(value) for value in _values(tensor, ("BOOL",))]
    if len(flags) != rows:
        raise InvalidArgument(
            f"input '{tensor.name}' has {len(flags)} rows; expected {rows}, one per row of "
            f"'{SEQUENCE_ID}'"
        )
    return flags


def _offsets(tensor: Tensor | None, rows: int) -> list[int] | None:
    if tensor is None:
        return None
    offsets = _values(tensor, ("INT64",))
    if len(offsets) != rows:
        raise InvalidArgument(
            f"input '{tensor.name}' has {len(offsets)} rows; expected {rows}, one per row of "
            f"'{SEQUENCE_ID}'"
        )
    for row, offset in enumerate(offsets):
        check_offset(f"{SEQUENCE_OFFSET}[{row}]", offset)
    return offsets


def control_outputs(errors: list[str] | None, offsets: list[int] | np.ndarray) -> list[Tensor]:
    """`sequence_error` ("" for each row that stepped, the reason for each that failed;
    `errors` None: every row stepped) and `sequence_offset` (each row's sequence's time
    steps after the request)."""
    rows = len(offsets)
    data = np.empty(rows, dtype=object)
    if errors is None:
        data.fill(b"")
    else:
        data[:] = [message.encode("utf-8") for message in errors]
    return [
        Tensor(SEQUENCE_ERROR, "BYTES", (rows,), data),
        Tensor(SEQUENCE_OFFSET, "INT64", (rows,), np.asarray(offsets, np.int64)),
    ]
