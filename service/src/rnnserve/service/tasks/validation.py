"""Checks every request passes before ONNX Runtime sees a tensor.

ORT aborts the whole process on some shapes (batch 0 for LSTM and GRU, sequence length 0
for GRU), so nothing may reach it unchecked. Every message names the tensor or parameter
at fault and what was expected: it goes to the client verbatim.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from rnnserve.protocol.codec import DTYPES
from rnnserve.service.errors import InvalidArgument
from rnnserve.service.settings import Settings
from rnnserve.service.types import InferRequest, Parameter, Tensor

SMALL = 16  # elements up to which a tensor is checked for NaN and infinity in Python


def _shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(dim) for dim in shape) + "]"


def check_input_names(
    request: InferRequest, allowed: Iterable[str], required: Iterable[str] = ()
) -> dict[str, Tensor]:
    """The request's inputs by name: no duplicates, no unknown names, the required present."""
    allowed = list(allowed)
    inputs: dict[str, Tensor] = {}
    for tensor in request.inputs:
        if tensor.name not in allowed:
            raise InvalidArgument(
                f"unexpected input '{tensor.name}' for model '{request.model_name}'; "
                f"expected inputs from {allowed}"
            )
        if tensor.name in inputs:
            raise InvalidArgument(f"input '{tensor.name}' appears more than once")
        inputs[tensor.name] = tensor
    for name in required:
        if name not in inputs:
            raise InvalidArgument(f"missing input '{name}' for model '{request.model_name}'")
    return inputs


def check_output_names(
    request: InferRequest, available: Sequence[str], default: Sequence[str]
) -> list[str]:
    """The outputs to return: those the client named (each known, once) or the default."""
    for name in request.outputs:
        if name not in available:
            raise InvalidArgument(
                f"unknown output '{name}' requested from model '{request.model_name}'; "
                f"expected outputs from {list(available)}"
            )
    if len(set(request.outputs)) != len(request.outputs):
        raise InvalidArgument("an output is requested more than once")
    return list(request.outputs) or list(default)


def numeric_array(tensor: Tensor, datatype: str, rank: int) -> np.ndarray:
    """The tensor's data, checked for datatype and rank, as a contiguous numpy array."""
    if tensor.datatype != datatype:
        raise InvalidArgument(
            f"input '{tensor.name}' has datatype {tensor.datatype}; expected {datatype}"
        )
    if len(tensor.shape) != rank:
        raise InvalidArgument(
            f"input '{tensor.name}' has shape {_shape(tensor.shape)} (rank {len(tensor.shape)}); "
            f"expected rank {rank}"
        )
    data = tensor.data
    dtype = DTYPES[datatype]
    # Most often the codec's own array, already as asked: returned without a numpy call.
    if (
        type(data) is np.ndarray
        and data.shape == tensor.shape
        and data.dtype == dtype
        and data.flags.c_contiguous
    ):
        return data
    data = np.asarray(data)
    if data.size != math.prod(tensor.shape):
        raise InvalidArgument(
            f"input '{tensor.name}' holds {data.size} values; its shape {_shape(tensor.shape)} "
            f"needs {math.prod(tensor.shape)}"
        )
    return np.ascontiguousarray(data.reshape(tensor.shape), dtype=dtype)


def check_finite(name: str, data: np.ndarray) -> None:
    """Floating-point data only: NaN and infinity never reach ORT (integers are finite)."""
    if data.dtype.kind != "f":
        return
    # A step's few values are checked in Python: numpy's isfinite() costs more for them.
    # Larger data are reduced by the ufunc itself: ndarray.all() goes through numpy's
    # interpreted _methods._all.
    finite = (
        all(map(math.isfinite, data.ravel().tolist()))
        if data.size <= SMALL
        else np.logical_and.reduce(np.isfinite(data), axis=None)
    )
    if not finite:
        raise InvalidArgument(f"input '{name}' contains NaN or infinity; expected finite values")


def check_ids(name: str, ids: np.ndarray, count: int) -> None:
    """Ids that index a table of `count` rows (a vocabulary, an embedding): each from 0 to
    count - 1. ORT would refuse the others naming a node, not the input. A minimum and a
    maximum over the array (the ufuncs': ndarray.min and max run numpy's interpreted
    _methods); the offender is looked for only once one is out."""
    if ids.size and (
        int(np.minimum.reduce(ids, axis=None)) < 0
        or int(np.maximum.reduce(ids, axis=None)) >= count
    ):
        bad = ids[(ids < 0) | (ids >= count)]
        raise InvalidArgument(
            f"input '{name}' has token id {int(bad.flat[0])}; expected ids from 0 to {count - 1}"
        )


def check_dim(name: str, axis: str, size: int, expected: int) -> None:
    if size != expected:
        raise InvalidArgument(f"input '{name}' has {axis} {size}; expected {expected}")


def check_batch(name: str, batch: int, settings: Settings) -> None:
    """Batch 0 aborts ORT's LSTM and GRU kernels: refuse it here."""
    if batch < 1:
        raise InvalidArgument(f"input '{name}' has batch size {batch}; expected at least 1")
    if batch > settings.max_batch_size:
        raise InvalidArgument(
            f"input '{name}' has batch size {batch}; expected at most {settings.max_batch_size}"
        )


def check_sequence(name: str, length: int, settings: Settings) -> None:
    """Sequence length 0 aborts ORT's GRU kernel: refuse it here."""
    if length < 1:
        raise InvalidArgument(f"input '{name}' has sequence length {length}; expected at least 1")
    if length > settings.max_sequence_length:
        raise InvalidArgument(
            f"input '{name}' has sequence length {length}; "
            f"expected at most {settings.max_sequence_length}"
        )


def state_array(tensor: Tensor, expected: tuple[int, ...], batch_axis: int) -> np.ndarray:
    """A state input: FP32 of the state's shape, its batch (on `batch_axis`) matching the
    request's."""
    data = numeric_array(tensor, "FP32", len(expected))
    if data.shape != expected:
        layout = (
            "(layers*directions, batch, hidden)"
            if batch_axis == 1 and len(expected) == 3
            else f"(batch on axis {batch_axis})"
        )
        raise InvalidArgument(
            f"input '{tensor.name}' has shape {_shape(data.shape)}; expected {_shape(expected)} "
            f"{layout}"
        )
    check_finite(tensor.name, data)
    return data


# A text tensor's shape in ModelMetadata: one string per row, [batch, 1], as Triton describes
# a string per row (ModelConfig dims [1] below the batch), so that tools which shape their
# requests from the metadata (perf_analyzer) send what the configuration says; text_rows
# accepts [batch] as well, and an output comes back in its request's shape.
TEXT_SHAPE = (-1, 1)


def text_rows(tensor: Tensor, settings: Settings) -> list[bytes]:
    """A BYTES text input: shape [batch] or Triton's [batch, 1]; one string per row."""
    if tensor.datatype != "BYTES":
        raise InvalidArgument(
            f"input '{tensor.name}' has datatype {tensor.datatype}; expected BYTES"
        )
    shape = tuple(tensor.shape)
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise InvalidArgument(
            f"input '{tensor.name}' has shape {_shape(shape)}; expected [batch] or [batch, 1]"
        )
    check_batch(tensor.name, shape[0], settings)
    rows = list(np.asarray(tensor.data, dtype=object).reshape(-1))
    if len(rows) != shape[0]:
        raise InvalidArgument(
            f"input '{tensor.name}' holds {len(rows)} strings; its shape {_shape(shape)} "
            f"needs {shape[0]}"
        )
    return rows


def decode_text(
    name: str, rows: Sequence[bytes], char_ids: dict[str, int], settings: Settings
) -> list[list[int]]:
    """Token ids of each row: valid UTF-8, not empty, made of the vocabulary's characters."""
    expected = repr("".join(sorted(char_ids)))
    token_rows = []
    for index, row in enumerate(rows):
        try:
            text = row.decode("utf-8") if isinstance(row, bytes) else None
        except UnicodeDecodeError as error:
            raise InvalidArgument(
                f"{name}[{index}] is not valid UTF-8 (byte {error.start}); expected UTF-8 text"
            ) from None
        if text is None:
            raise InvalidArgument(f"{name}[{index}] is not a byte string; expected UTF-8 text")
        if not text:
            raise InvalidArgument(
                f"{name}[{index}] is empty; expected at least one character from {expected}"
            )
        unknown = sorted({char for char in text if char not in char_ids})
        if unknown:
            raise InvalidArgument(
                f"{name}[{index}] has characters not in the model's vocabulary: "
                f"{', '.join(map(repr, unknown))}; expected characters from {expected}"
            )
        check_sequence(f"{name}[{index}]", len(text), settings)
        token_rows.append([char_ids[char] for char in text])
    return token_rows


def int_parameter(parameters: dict[str, Parameter], name: str, default: int, maximum: int) -> int:
    """A positive integer parameter, at most `maximum`; bools are not integers here."""
    value = parameters.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgument(f"parameter '{name}' is {value!r}; expected a positive integer")
    if value > maximum:
        raise InvalidArgument(f"parameter '{name}' is {value}; expected at most {maximum}")
    return value
