"""Tensor data and parameters on the wire <-> numpy arrays and Python values.

Tensor data travels as typed `contents` or as raw little-endian bytes (`raw_input_contents`,
`raw_output_contents`; BYTES elements each prefixed with a 4-byte little-endian length).
BYTES tensors are numpy object arrays of `bytes`. Everything here is message-level: the
server wraps it in its own types, the client hands the arrays to its caller.
"""

from __future__ import annotations

import itertools
import math
import struct
import sys
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

import numpy as np

Parameter = bool | int | float | str

# Open Inference Protocol datatype -> numpy dtype (BYTES: object arrays of `bytes`).
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
DATATYPE_OF_DTYPE = {dtype: name for name, dtype in DTYPES.items() if name != "BYTES"}
# The wire's (little-endian) dtype of each datatype but BYTES, made once: newbyteorder()
# builds a new dtype on every call, and every tensor of every request needs one.
WIRE_DTYPES = {name: dtype.newbyteorder("<") for name, dtype in DTYPES.items() if name != "BYTES"}
WIRE_IS_NATIVE = sys.byteorder == "little"  # the wire's arrays are the host's as they are

# Which typed `contents` field carries each datatype; FP16 has none (raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

LENGTH_PREFIX = struct.Struct("<I")
# The largest shapes: numpy's most dimensions, and the most elements it can index at 8
# bytes an element.
MAX_RANK = 64
MAX_ELEMENTS = 2**60 - 1

# A tensor's parameter saying how to read its elements, by MLServer's name and values:
# TEXT for BYTES elements that are UTF-8 text. Model metadata marks text tensors with it, so
# that clients hand them out as `str`.
CONTENT_TYPE = "content_type"
TEXT = "str"


class CodecError(ValueError):
    """Data that does not decode: the message names the tensor or parameter at fault."""


# Parameters -------------------------------------------------------------------------


def parameters_from_proto(params: Mapping[str, Any], where: str) -> dict[str, Parameter]:
    """An `InferParameter` map as Python values."""
    values: dict[str, Parameter] = {}
    if not params:  # most tensors carry none
        return values
    # By key: a protobuf map's items() is the Mapping ABC's, a view iterated in Python.
    for key in params:
        param = params[key]
        choice = param.WhichOneof("parameter_choice")
        if choice is None:
            raise CodecError(f"{where} parameter '{key}' has no value")
        values[key] = getattr(param, choice)
    return values


def parameters_to_proto(values: Mapping[str, Parameter], out: MutableMapping[str, Any]) -> None:
    for key, value in values.items():
        param = out[key]
        # bool first: it is a subclass of int.
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            if value >= 2**63:
                param.uint64_param = value
            else:
                param.int64_param = value
        elif isinstance(value, float):
            param.double_param = value
        else:
            param.string_param = str(value)


# Tensors ----------------------------------------------------------------------------


def checked_shape(name: str, shape: Sequence[int]) -> tuple[int, ...]:
    dims = tuple(shape)  # ints already (int64 on the wire)
    if dims and min(dims) < 0:
        raise CodecError(
            f"input '{name}': shape {list(shape)} has a negative dimension; expected sizes >= 0"
        )
    if len(dims) > MAX_RANK:
        raise CodecError(
            f"input '{name}': shape has {len(dims)} dimensions; at most {MAX_RANK} are accepted"
        )
    # numpy refuses such a shape even with a dimension 0 (no array has so many elements).
    if math.prod(filter(None, dims)) > MAX_ELEMENTS:
        raise CodecError(
            f"input '{name}': shape {list(shape)} has more elements than any tensor may hold "
            f"(at most {MAX_ELEMENTS:,}, zero dimensions aside)"
        )
    return dims


def checked_dtype(name: str, datatype: str) -> np.dtype:
    dtype = DTYPES.get(datatype)
    if dtype is None:
        raise CodecError(
            f"input '{name}': unknown datatype '{datatype}'; expected one of {', '.join(DTYPES)}"
        )
    return dtype


def decode_bytes(name: str, raw: bytes | memoryview, count: int) -> list[bytes]:
    """Split length-prefixed BYTES elements; the buffer must hold exactly `count`."""
    items: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + LENGTH_PREFIX.size > len(raw):
            raise CodecError(f"input '{name}': BYTES data ends inside a length prefix")
        (length,) = LENGTH_PREFIX.unpack_from(raw, offset)
        offset += LENGTH_PREFIX.size
        if offset + length > len(raw):
            raise CodecError(
                f"input '{name}': BYTES element {len(items)} claims {length} bytes, "
                f"only {len(raw) - offset} remain"
            )
        items.append(bytes(raw[offset : offset + length]))
        offset += length
    if len(items) != count:
        raise CodecError(
            f"input '{name}': BYTES data holds {len(items)} elements, shape needs {count}"
        )
    return items


def encode_bytes(items: np.ndarray) -> bytes:
    """BYTES elements, each after its length (a multi-session answer has one per row)."""
    values = items.reshape(-1).tolist()
    if not any(values):  # every one empty (the row errors of a batch whose rows all stepped)
        return bytes(LENGTH_PREFIX.size * len(values))
    elements = [
        item if isinstance(item, bytes) else item.encode() if isinstance(item, str) else bytes(item)
        for item in values
    ]
    prefixes = map(LENGTH_PREFIX.pack, map(len, elements))
    return b"".join(itertools.chain.from_iterable(zip(prefixes, elements, strict=True)))


def object_array(items: Sequence[bytes | str], shape: tuple[int, ...]) -> np.ndarray:
    """A BYTES tensor as numpy holds it: its elements (bytes, or str once decoded as text)
    in an object array."""
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array.reshape(shape)


def array_from_raw(
    name: str,
    datatype: str,
    shape: Sequence[int],
    raw: bytes | memoryview,
    field: str = "raw_input_contents",
) -> np.ndarray:
    """The array raw little-endian bytes hold; `field` names where they came from."""
    dtype = checked_dtype(name, datatype)
    dims = checked_shape(name, shape)
    count = math.prod(dims)
    if datatype == "BYTES":
        return object_array(decode_bytes(name, raw, count), dims)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise CodecError(
            f"input '{name}': {field} holds {len(raw)} bytes; "
            f"shape {list(dims)} of {datatype} needs {expected}"
        )
    if WIRE_IS_NATIVE:
        # One numpy call, on a copy of its own (writable; the message's bytes may go): a
        # step's tensors are a few values, where each numpy call costs more than the copy.
        return np.ndarray(dims, dtype, buffer=bytearray(raw))
    return np.frombuffer(raw, dtype=WIRE_DTYPES[datatype]).astype(dtype).reshape(dims)


def array_from_contents(
    name: str, datatype: str, shape: Sequence[int], contents: Any
) -> np.ndarray:
    """The array an `InferTensorContents` holds, checked against datatype and shape."""
    dtype = checked_dtype(name, datatype)
    dims = checked_shape(name, shape)
    count = math.prod(dims)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise CodecError(f"input '{name}': {datatype} data must come in raw_input_contents")
    others = [f.name for f, _ in contents.ListFields() if f.name != field]
    if others:
        raise CodecError(
            f"input '{name}': datatype {datatype} carries its data in contents.{field}, "
            f"found contents.{others[0]}"
        )
    values = getattr(contents, field)
    if len(values) != count:
        raise CodecError(
            f"input '{name}': contents.{field} holds {len(values)} elements, "
            f"shape {list(dims)} needs {count}"
        )
    if datatype == "BYTES":
        return object_array(list(values), dims)
    try:
        return np.array(values, dtype=dtype).reshape(dims)
    except OverflowError as error:
        raise CodecError(f"input '{name}': a value does not fit {datatype}") from error


def wire_array(name: str, data: np.ndarray | list[Any] | str | bytes) -> tuple[str, np.ndarray]:
    """The datatype and array to send for numpy data; str/bytes (or arrays of them) are
    BYTES."""
    array = np.asarray(data)
    if array.dtype.kind in "USO":
        items = [x.encode() if isinstance(x, str) else bytes(x) for x in array.reshape(-1)]
        return "BYTES", object_array(items, array.shape)
    datatype = DATATYPE_OF_DTYPE.get(array.dtype)
    if datatype is None:
        raise CodecError(f"input '{name}': numpy dtype {array.dtype} has no protocol datatype")
    return datatype, array


def fill_contents(datatype: str, data: np.ndarray, contents: Any) -> None:
    """Writes `data` into an `InferTensorContents` (the typed field of its datatype)."""
    values = np.asarray(data).reshape(-1)
    if datatype == "BYTES":
        items = [item.encode() if isinstance(item, str) else bytes(item) for item in values]
        contents.bytes_contents.extend(items)
    else:
        getattr(contents, CONTENTS_FIELD[datatype]).extend(values.tolist())


def raw_of(datatype: str, data: np.ndarray) -> bytes:
    if datatype == "BYTES":
        return encode_bytes(np.asarray(data, dtype=object))
    wire = WIRE_DTYPES[datatype]
    # tobytes() writes any array in C order: only another dtype needs a converted copy.
    return (data if data.dtype == wire else data.astype(wire)).tobytes()
