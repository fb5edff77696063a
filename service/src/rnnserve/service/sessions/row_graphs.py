"""The small ONNX graphs that move session states by row where they live (device_state):
gather rows of a slab into a batch state, scatter a batch state's rows into a slab, grow a
slab. ONNX Runtime runs them on the models' device, so a step's state never leaves it.

The server never imports `onnx` (the import contract), so the graphs are written here as
the protobuf bytes of an ONNX ModelProto, field by field (onnx.proto3's numbering). Every
graph takes `count` state tensors at once, one input (and output) each, so that one ORT run
moves all of a step's states; every size is dynamic.

A slab is `(capacity, before, after)`: one session's state per row, as the memory store
keeps it; a batch state is `(before, rows, after)`, as a graph takes it (state.py).
"""

from __future__ import annotations

from collections.abc import Sequence

_FLOAT, _INT64 = 1, 7  # TensorProto.DataType
_OPSET = 18
_IR_VERSION = 8
_SWAP = (1, 0, 2)  # (before, rows, after) <-> (rows, before, after)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): strings and messages."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _text(number: int, text: str) -> bytes:
    return _field(number, text.encode())


def _value_info(name: str, elem_type: int, rank: int) -> bytes:
    """ValueInfoProto: a tensor of `rank` dynamic dimensions."""
    dims = b"".join(_field(1, _text(2, f"{name}_{axis}")) for axis in range(rank))
    tensor = _int_field(1, elem_type) + _field(2, dims)  # TypeProto.Tensor
    return _text(1, name) + _field(2, _field(1, tensor))  # name, TypeProto.tensor_type


def _int_attribute(name: str, value: int) -> bytes:
    return _text(1, name) + _int_field(3, value) + _int_field(20, 2)  # i, type INT


def _ints_attribute(name: str, values: Sequence[int]) -> bytes:
    return _text(1, name) + b"".join(_int_field(8, v) for v in values) + _int_field(20, 7)


def _node(op: str, inputs: Sequence[str], outputs: Sequence[str], *attributes: bytes) -> bytes:
    body = b"".join(_text(1, name) for name in inputs) + b"".join(
        _text(2, name) for name in outputs
    )
    body += _text(4, op) + b"".join(_field(5, attribute) for attribute in attributes)
    return _field(1, body)


def _model(
    nodes: Sequence[bytes], inputs: Sequence[bytes], outputs: Sequence[bytes], name: str
) -> bytes:
    graph = b"".join(nodes) + _text(2, name)
    graph += b"".join(_field(11, one) for one in inputs) + b"".join(
        _field(12, one) for one in outputs
    )
    opset = _text(1, "") + _int_field(2, _OPSET)
    return _int_field(1, _IR_VERSION) + _field(7, graph) + _field(8, opset)


def _transpose(source: str, target: str) -> bytes:
    return _node("Transpose", [source], [target], _ints_attribute("perm", _SWAP))


def gather(count: int) -> bytes:
    """slab_i (capacity, before, after), slots (rows,) -> rows_i (before, rows, after): the
    slots' states as a batch state."""
    nodes, inputs, outputs = [], [_value_info("slots", _INT64, 1)], []
    for i in range(count):
        nodes.append(
            _node("Gather", [f"slab_{i}", "slots"], [f"taken_{i}"], _int_attribute("axis", 0))
        )
        nodes.append(_transpose(f"taken_{i}", f"rows_{i}"))
        inputs.append(_value_info(f"slab_{i}", _FLOAT, 3))
        outputs.append(_value_info(f"rows_{i}", _FLOAT, 3))
    return _model(nodes, inputs, outputs, "gather")


def merge(count: int) -> bytes:
    """gather's, into a batch state that has other rows: slab_i, slots (m,), base_i
    (before, rows, after), at (m, 1) -> rows_i: base_i with row at[j] the state of slot
    slots[j]."""
    nodes: list[bytes] = []
    inputs = [_value_info("slots", _INT64, 1), _value_info("at", _INT64, 2)]
    outputs = []
    for i in range(count):
        nodes.append(
            _node("Gather", [f"slab_{i}", "slots"], [f"taken_{i}"], _int_attribute("axis", 0))
        )
        nodes.append(_transpose(f"base_{i}", f"by_row_{i}"))
        nodes.append(_node("ScatterND", [f"by_row_{i}", "at", f"taken_{i}"], [f"merged_{i}"]))
        nodes.append(_transpose(f"merged_{i}", f"rows_{i}"))
        inputs += [_value_info(f"slab_{i}", _FLOAT, 3), _value_info(f"base_{i}", _FLOAT, 3)]
        outputs.append(_value_info(f"rows_{i}", _FLOAT, 3))
    return _model(nodes, inputs, outputs, "merge")


def scatter(count: int) -> bytes:
    """slab_i, rows_i (before, rows, after), take (m,), slots (m, 1) -> slab_out_i: slab_i
    with slot slots[j] set to row take[j] of rows_i. Bound to slab_i's own memory, the
    output is slab_i updated in place: ScatterND copies its data input only when the output
    is elsewhere."""
    nodes: list[bytes] = []
    inputs = [_value_info("take", _INT64, 1), _value_info("slots", _INT64, 2)]
    outputs = []
    for i in range(count):
        nodes.append(_transpose(f"rows_{i}", f"by_row_{i}"))
        nodes.append(
            _node("Gather", [f"by_row_{i}", "take"], [f"taken_{i}"], _int_attribute("axis", 0))
        )
        nodes.append(_node("ScatterND", [f"slab_{i}", "slots", f"taken_{i}"], [f"slab_out_{i}"]))
        inputs += [_value_info(f"slab_{i}", _FLOAT, 3), _value_info(f"rows_{i}", _FLOAT, 3)]
        outputs.append(_value_info(f"slab_out_{i}", _FLOAT, 3))
    return _model(nodes, inputs, outputs, "scatter")


def grow(count: int) -> bytes:
    """slab_i, pads (6,) -> grown_i: slab_i with rows of zeros added (Pad's `pads`: the
    zeros before and after each axis)."""
    nodes, inputs, outputs = [], [_value_info("pads", _INT64, 1)], []
    for i in range(count):
        nodes.append(_node("Pad", [f"slab_{i}", "pads"], [f"grown_{i}"]))
        inputs.append(_value_info(f"slab_{i}", _FLOAT, 3))
        outputs.append(_value_info(f"grown_{i}", _FLOAT, 3))
    return _model(nodes, inputs, outputs, "grow")
