"""The Open Inference Protocol's REST side (KServe v2 JSON), shared by the server's REST
front end and the client: tensors as JSON `data` or as Triton's binary tensor data
extension, and parameters.

A body is a JSON object, optionally followed by binary tensor data; the header
`Inference-Header-Content-Length` then says how many bytes the JSON takes. A tensor in the
binary part carries the parameter `binary_data_size` (its byte count; the bytes are laid out
as `raw_input_contents` are: little-endian, BYTES elements length-prefixed) and no `data`.
JSON `data` holds the elements in row-major order, flat or nested; BYTES elements are
strings (UTF-8), BOOL elements true or false. Numbers go out as the exact decimal of each
element (FP32 as the double it converts to), so JSON loses nothing.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from rnnserve.protocol import codec
from rnnserve.protocol.codec import CodecError, Parameter

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_DATA_SIZE = "binary_data_size"  # a tensor's parameter: its bytes in the binary part
BINARY_DATA = "binary_data"  # a requested output's parameter: send it binary
BINARY_DATA_OUTPUT = "binary_data_output"  # a request's parameter: send every output binary

# gRPC status name -> HTTP status (Google's mapping of the canonical codes). An error body
# is {"error": message, "code": status name}; the code tells apart what shares a status.
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404,
    "ABORTED": 409, "ALREADY_EXISTS": 409, "RESOURCE_EXHAUSTED": 429, "CANCELLED": 499,
    "INTERNAL": 500, "UNKNOWN": 500, "DATA_LOSS": 500, "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504,
}  # fmt: skip
# For an error body without a code (another server): the first code of each status.
CODE_OF_STATUS = {**{s: c for c, s in reversed(HTTP_STATUS.items())}, 413: "RESOURCE_EXHAUSTED"}

_INTEGER_KINDS = "iu"
_INTEGER = {int}  # the types a shape's dimensions may have (not bool)
# JSON nesting accepted: a body is an object, its inputs an array, each an object whose
# data nests as deep as its tensor's rank.
MAX_DEPTH = 64
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_STEPS = np.zeros(256, np.int8)  # what each byte does to the depth
_STEPS[[ord("["), ord("{")]] = 1
_STEPS[[ord("]"), ord("}")]] = -1
_DEPTH_BLOCK = 1 << 16  # bytes scanned at once
_JSON_TYPES = {"BOOL": (bool,), "BYTES": (str,)}  # others: numbers (ints for integer types)


# Bodies ------------------------------------------------------------------------------


def split_body(
    body: bytes | bytearray, header_length: str | None
) -> tuple[dict[str, Any], memoryview]:
    """A body's JSON object and the binary data after it (`header_length`: the value of
    the Inference-Header-Content-Length header, None when there is no binary part), which
    stays a view of the body. The JSON must be UTF-8 text of valid Unicode (no lone
    surrogate, escaped or not) nested at most MAX_DEPTH deep; it is read in time linear in
    its length."""
    length = len(body)
    if header_length is not None:
        if not header_length.isdigit():
            raise CodecError(f"header {HEADER_LENGTH} must be a byte count, got {header_length!r}")
        length = int(header_length)
        if length > len(body):
            raise CodecError(
                f"header {HEADER_LENGTH} says {length} bytes of JSON; the body has {len(body)}"
            )
    view = memoryview(body)
    header = _json_object(view[:length])
    return header, view[length:]


def _json_object(raw: memoryview) -> dict[str, Any]:
    try:
        text = str(raw, "utf-8")
    except UnicodeDecodeError as error:
        raise CodecError(f"the body is not UTF-8 text: {error}") from None
    if text.count("[") + text.count("{") > MAX_DEPTH:  # else it cannot nest deeper
        _check_depth(np.frombuffer(raw, np.uint8))
    try:
        with _uncollected():
            header = json.loads(text)
    except ValueError as error:
        raise CodecError(f"the body is not JSON: {error}") from None
    if _SURROGATE_ESCAPE.search(text):  # then a string may hold one alone
        try:
            json.dumps(header, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise CodecError(
                "the body's JSON escapes a lone surrogate (such as \\ud800): it is no "
                "Unicode character"
            ) from None
    if not isinstance(header, dict):
        raise CodecError(f"the body must be a JSON object, got {type(header).__name__}")
    return header


@contextlib.contextmanager
def _uncollected() -> Iterator[None]:
    """Python's cyclic collector paused: parsing JSON makes a container per array and
    object, none in a cycle, and each collection it set off would scan every object of
    the process again (in a server, most of the parse's time)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _check_depth(codes: np.ndarray) -> None:
    """JSON text (its bytes) nested at most MAX_DEPTH deep: Python's parser recurses, and
    fails with no clear word for a body nested 100,000 deep. The brackets outside strings
    are counted with numpy, a block at a time: each block's quotes and brackets are found
    in a pass apiece, the rest is done on their positions alone. Carried from block to
    block: the depth, whether it ends inside a string, and the backslashes it ends with."""
    depth, in_string, backslashes = 0, 0, 0
    for start in range(0, len(codes), _DEPTH_BLOCK):
        block = codes[start : start + _DEPTH_BLOCK]
        quotes = np.flatnonzero(block == _QUOTE)
        quotes = quotes[~_escaped(block, quotes, backslashes)]
        brackets = np.flatnonzero(_STEPS[block])
        outside = (np.searchsorted(quotes, brackets) + in_string) % 2 == 0
        levels = np.cumsum(_STEPS[block[brackets[outside]]]) + depth
        if len(levels):
            if levels.max() > MAX_DEPTH:
                raise CodecError(f"the body's JSON nests deeper than {MAX_DEPTH} levels")
            depth = int(levels[-1])
        in_string = (in_string + len(quotes)) % 2
        backslashes = (
            int(_backslash_runs(block, backslashes)[1][-1]) if block[-1] == _BACKSLASH else 0
        )


def _escaped(block: np.ndarray, quotes: np.ndarray, before: int) -> np.ndarray:
    """Which of the quotes an odd run of backslashes escapes (`before`: the run that ended
    the block before). A quote after a backslash is rare: only then are runs measured."""
    escaped = np.zeros(len(quotes), bool)
    behind = np.flatnonzero(block[quotes - 1] == _BACKSLASH)  # quotes[i] - 1 >= 0 below
    if len(quotes) and quotes[0] == 0:
        escaped[0] = before % 2 == 1
        behind = behind[behind > 0]
    if len(behind):
        ends, lengths = _backslash_runs(block, before)
        escaped[behind] = lengths[np.searchsorted(ends, quotes[behind] - 1)] % 2 == 1
    return escaped


def _backslash_runs(block: np.ndarray, before: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each run of backslashes in `block` ends, and its length (the first counting
    the `before` that ended the block before, when it starts the block)."""
    at = np.flatnonzero(block == _BACKSLASH)
    starts = np.flatnonzero(np.diff(at, prepend=-2) != 1)
    ends = np.append(starts[1:], len(at)) - 1
    lengths = ends - starts + 1
    if at[0] == 0:
        lengths[0] += before
    return at[ends], lengths


def join_body(header: Mapping[str, Any], binary: list[bytes]) -> tuple[bytes, int | None]:
    """A body: JSON, then the binary parts in order; and the JSON's length when there is a
    binary part (the value of Inference-Header-Content-Length), else None."""
    text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode()
    if not binary:
        return text, None
    return b"".join([text, *binary]), len(text)


class BinaryData:
    """The binary part of a body, read tensor by tensor in order."""

    def __init__(self, data: bytes | memoryview) -> None:
        self._data = memoryview(data)
        self._offset = 0

    def take(self, where: str, size: object) -> memoryview:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise CodecError(f"{where}: parameter {BINARY_DATA_SIZE} must be a byte count >= 0")
        end = self._offset + size
        if end > len(self._data):
            raise CodecError(
                f"{where}: {BINARY_DATA_SIZE} is {size}, but only "
                f"{len(self._data) - self._offset} bytes of binary data remain"
            )
        chunk = self._data[self._offset : end]
        self._offset = end
        return chunk

    def check_consumed(self) -> None:
        left = len(self._data) - self._offset
        if left:
            raise CodecError(
                f"{left} bytes of binary data follow the JSON that no tensor's "
                f"{BINARY_DATA_SIZE} accounts for"
            )


# Parameters -------------------------------------------------------------------------


def parameters_from_json(value: object, where: str) -> dict[str, Parameter]:
    """A `parameters` object: each value a bool, number or string."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CodecError(f"{where} parameters must be a JSON object")
    for key, item in value.items():
        if not isinstance(item, bool | int | float | str):
            raise CodecError(
                f"{where} parameter '{key}' must be a bool, number or string, "
                f"got {type(item).__name__}"
            )
    return value


# Tensors ----------------------------------------------------------------------------


_FP32_MAX = float(np.finfo(np.float32).max)
_LOOPED = 64  # up to this many values a loop in Python costs less than numpy's calls


def tensor_from_json(
    item: object, binary: BinaryData, kind: str = "input"
) -> tuple[str, str, np.ndarray, dict[str, Parameter]]:
    """A tensor object's name, datatype, data (from `data` or the binary part) and its
    parameters other than `binary_data_size`."""
    if not isinstance(item, dict):
        raise CodecError(f"each {kind} must be a JSON object")
    name = item.get("name")
    if not isinstance(name, str):
        raise CodecError(f"an {kind} lacks its 'name' (a string)")
    where = f"{kind} '{name}'"
    datatype = item.get("datatype")
    shape = item.get("shape")
    if not isinstance(datatype, str):
        raise CodecError(f"{where} lacks its 'datatype' (a string such as \"FP32\")")
    if not isinstance(shape, list) or not set(map(type, shape)) <= _INTEGER:
        raise CodecError(f"{where} lacks its 'shape' (a list of integers)")
    parameters = dict(parameters_from_json(item.get("parameters"), where))
    size = parameters.pop(BINARY_DATA_SIZE, None)
    if size is not None:
        if "data" in item:
            raise CodecError(f"{where}: give its data in 'data' or as binary data, not both")
        raw = binary.take(where, size)
        data = codec.array_from_raw(name, datatype, shape, raw, field="binary data")
    elif "data" in item:
        data = array_from_json(name, datatype, shape, item["data"], kind)
    else:
        raise CodecError(f"{where} has no 'data' and no {BINARY_DATA_SIZE} parameter")
    return name, datatype, data, parameters


def array_from_json(
    name: str, datatype: str, shape: list[int], data: object, kind: str = "input"
) -> np.ndarray:
    """The array JSON `data` holds, checked against datatype and shape."""
    where = f"{kind} '{name}'"
    dtype = codec.checked_dtype(name, datatype)
    dims = codec.checked_shape(name, shape)
    if datatype == "FP16":
        raise CodecError(f"{where}: FP16 data must come as binary data")
    values, types = _flat(data, where)
    count = math.prod(dims)
    if len(values) != count:
        raise CodecError(
            f"{where}: data holds {len(values)} elements, shape {list(dims)} needs {count}"
        )
    _check_types(values, types, datatype, dtype, where)
    if datatype == "BYTES":
        return codec.object_array([value.encode() for value in values], dims)
    try:
        if datatype == "FP32" and _past_fp32(values):  # it would become inf
            raise OverflowError
        return np.array(values, dtype=dtype).reshape(dims)
    except OverflowError:  # also numpy's, for an integer past its type's range
        raise CodecError(f"{where}: a value does not fit {datatype}") from None


def _past_fp32(values: list[Any]) -> bool:
    """Whether a finite number among `values` lies past FP32's range. Checked here rather
    than by numpy under np.errstate, which costs more than a small tensor's conversion (a
    body of 20,000 one-element inputs spent a quarter of its reading in it)."""
    if len(values) <= _LOOPED:
        return any(_FP32_MAX < abs(value) < math.inf for value in values)
    wide = np.abs(np.array(values, np.float64))
    return bool(((wide > _FP32_MAX) & (wide < math.inf)).any())


def _flat(data: object, where: str) -> tuple[list[Any], set[type]]:
    """The elements of `data`, flat or nested, row-major, and their types (C loops)."""
    if not isinstance(data, list):
        raise CodecError(f"{where}: 'data' must be a JSON array")
    types = set(map(type, data))
    if list not in types:
        return data, types
    values: list[Any] = []
    pending = [iter(data)]
    while pending:
        for value in pending[-1]:
            if isinstance(value, list):
                pending.append(iter(value))
                break
            values.append(value)
        else:
            pending.pop()
    return values, set(map(type, values))


def _check_types(
    values: list[Any], types: set[type], datatype: str, dtype: np.dtype, where: str
) -> None:
    if datatype in _JSON_TYPES:
        allowed: tuple[type, ...] = _JSON_TYPES[datatype]
        expected = "true or false" if datatype == "BOOL" else "strings"
    elif dtype.kind in _INTEGER_KINDS:
        allowed, expected = (int,), "integers"
    else:
        allowed, expected = (int, float), "numbers"
    if types <= set(allowed):
        return
    wrong = next(value for value in values if type(value) not in allowed)
    raise CodecError(f"{where}: {datatype} data must be JSON {expected}, found {json.dumps(wrong)}")


def tensor_to_json(
    name: str, datatype: str, data: np.ndarray, binary: list[bytes] | None
) -> dict[str, Any]:
    """A tensor object; its data appended to `binary` (binary data extension) when given,
    else in JSON `data` (flat)."""
    tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(data.shape)}
    if binary is not None:
        raw = codec.raw_of(datatype, data)
        binary.append(raw)
        tensor["parameters"] = {BINARY_DATA_SIZE: len(raw)}
    else:
        tensor["data"] = json_data(name, datatype, data)
    return tensor


def json_data(name: str, datatype: str, data: np.ndarray) -> list[Any]:
    """A tensor's elements as JSON values, flat, row-major."""
    values = np.asarray(data).reshape(-1)
    if datatype != "BYTES":
        return values.tolist()
    try:
        return [value if isinstance(value, str) else bytes(value).decode() for value in values]
    except UnicodeDecodeError:
        raise CodecError(
            f"'{name}' holds bytes that are not UTF-8 text: JSON cannot carry them; "
            f"ask for it as binary data (output parameter {BINARY_DATA}: true)"
        ) from None
