"""The embedding behind each integer input of a graph, read off the ONNX file itself.

A graph input that is the indices of a Gather whose data is an initializer (how torch
exports nn.Embedding, both exporters) takes ids from 0 to the initializer's rows - 1; ORT
refuses any other id at run time, with a message that names a node, not the input. With
the row count in the spec (TensorSpec.embedding_rows), the server refuses such an id
before ORT sees it, naming the input.

ORT shows no graph's nodes and the server has no onnx package, so this reads the few
fields it needs straight from the protobuf wire format (onnx.proto's field numbers
below); every other field, an initializer's weights among them, is skipped unread.
"""

from __future__ import annotations

from collections.abc import Iterator

# onnx.proto's field numbers.
MODEL_GRAPH = 7
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_INPUT = 1, 5, 11
NODE_INPUT, NODE_OP_TYPE, NODE_ATTRIBUTE = 1, 4, 5
ATTRIBUTE_NAME, ATTRIBUTE_INT = 1, 3
TENSOR_DIMS, TENSOR_NAME = 1, 8
VALUE_INFO_NAME = 1

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5

Field = tuple[int, int, "memoryview | int"]  # number, wire type, bytes or integer


def embedding_rows(model: bytes) -> dict[str, int]:
    """Each graph input that indexes an initializer's rows directly (a Gather on axis 0),
    by name: the rows (the fewest, where it indexes several). ValueError for bytes that
    are not an ONNX model."""
    graph = next((value for number, _, value in _fields(memoryview(model))
                  if number == MODEL_GRAPH), None)  # fmt: skip
    if not isinstance(graph, memoryview):
        return {}
    inputs: set[str] = set()
    initializers: dict[str, int] = {}  # name -> rows
    gathers: list[tuple[str, str]] = []  # (data, indices)
    for number, _, value in _fields(graph):
        if not isinstance(value, memoryview):
            continue
        if number == GRAPH_INPUT:
            inputs.add(_string(value, VALUE_INFO_NAME))
        elif number == GRAPH_INITIALIZER:
            name, rows = _tensor_rows(value)
            if rows is not None:
                initializers[name] = rows
        elif number == GRAPH_NODE:
            gather = _gather(value)
            if gather is not None:
                gathers.append(gather)
    found: dict[str, int] = {}
    for data, indices in gathers:
        if indices in inputs and indices not in initializers and data in initializers:
            found[indices] = min(found.get(indices, initializers[data]), initializers[data])
    return found


def _gather(node: memoryview) -> tuple[str, str] | None:
    """A Gather node's data and indices, where it gathers on axis 0."""
    op_type, inputs, axis = "", [], 0
    for number, _, value in _fields(node):
        if not isinstance(value, memoryview):
            continue
        if number == NODE_OP_TYPE:
            op_type = bytes(value).decode()
        elif number == NODE_INPUT:
            inputs.append(bytes(value).decode())
        elif number == NODE_ATTRIBUTE and _string(value, ATTRIBUTE_NAME) == "axis":
            axis = _int(value, ATTRIBUTE_INT)
    if op_type != "Gather" or len(inputs) != 2 or axis != 0:
        return None
    return inputs[0], inputs[1]


def _tensor_rows(tensor: memoryview) -> tuple[str, int | None]:
    """An initializer's name and its first dimension (None for a scalar)."""
    name, dims = "", []
    for number, wire, value in _fields(tensor):
        if number == TENSOR_NAME and isinstance(value, memoryview):
            name = bytes(value).decode()
        elif number == TENSOR_DIMS and wire == VARINT and isinstance(value, int):
            dims.append(value)
        elif number == TENSOR_DIMS and isinstance(value, memoryview):  # packed
            position = 0
            while position < len(value):
                dim, position = _varint(value, position)
                dims.append(dim)
    return name, dims[0] if dims else None


def _string(message: memoryview, field: int) -> str:
    return next(
        (
            bytes(v).decode()
            for n, _, v in _fields(message)
            if n == field and not isinstance(v, int)
        ),
        "",
    )


def _int(message: memoryview, field: int) -> int:
    return next((v for n, _, v in _fields(message) if n == field and isinstance(v, int)), 0)


def _fields(message: memoryview) -> Iterator[Field]:
    """A message's fields in order; a length-delimited one as a view of its bytes."""
    position, end = 0, len(message)
    while position < end:
        key, position = _varint(message, position)
        number, wire = key >> 3, key & 7
        if wire == VARINT:
            value, position = _varint(message, position)
            yield number, wire, value - (1 << 64) if value >= 1 << 63 else value
        elif wire == LENGTH:
            length, position = _varint(message, position)
            if position + length > end:
                raise ValueError("not an ONNX model: a field runs past the end")
            yield number, wire, message[position : position + length]
            position += length
        elif wire in (FIXED64, FIXED32):
            position += 8 if wire == FIXED64 else 4
        else:
            raise ValueError(f"not an ONNX model: wire type {wire}")


def _varint(data: memoryview, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data):
            raise ValueError("not an ONNX model: a number runs past the end")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
