"""Tensor data and parameters on the wire, as client and server both encode them."""

from __future__ import annotations

import numpy as np
import pytest

from rnnserve.protocol import codec
from rnnserve.protocol import messages as pb


def test_bytes_travel_with_four_byte_little_endian_length_prefixes() -> None:
    datatype, array = codec.wire_array("text", ["hi", "héllo"])

    raw = codec.raw_of(datatype, array)

    assert datatype == "BYTES"
    assert raw == b"\x02\x00\x00\x00hi" + b"\x06\x00\x00\x00h\xc3\xa9llo"
    decoded = codec.array_from_raw("text", "BYTES", [2], raw)
    assert decoded.tolist() == [b"hi", "héllo".encode()]


def test_empty_bytes_elements_travel_as_their_length_alone() -> None:
    raw = codec.raw_of("BYTES", np.array([b"", b"x", ""], dtype=object))

    assert raw == b"\x00\x00\x00\x00" + b"\x01\x00\x00\x00x" + b"\x00\x00\x00\x00"
    assert codec.array_from_raw("row", "BYTES", [3], raw).tolist() == [b"", b"x", b""]
    all_empty = codec.raw_of("BYTES", np.array([[b"", ""], ["", b""]], dtype=object))
    assert all_empty == b"\x00\x00\x00\x00" * 4


def test_numbers_travel_little_endian_whatever_the_array_byte_order() -> None:
    big_endian = np.array([1.5, -2.0], dtype=">f4")

    raw = codec.raw_of("FP32", big_endian)

    assert raw == np.array([1.5, -2.0], "<f4").tobytes()
    np.testing.assert_array_equal(codec.array_from_raw("y", "FP32", [2], raw), big_endian)


def test_python_parameters_take_the_matching_protobuf_kind() -> None:
    message = pb.ModelInferRequest()

    codec.parameters_to_proto(
        {"flag": True, "count": 3, "big": 2**64 - 1, "ratio": 0.25, "label": "a"},
        message.parameters,
    )

    kinds = {k: v.WhichOneof("parameter_choice") for k, v in message.parameters.items()}
    assert kinds == {"flag": "bool_param", "count": "int64_param", "big": "uint64_param",
                     "ratio": "double_param", "label": "string_param"}  # fmt: skip
    assert codec.parameters_from_proto(message.parameters, "request")["big"] == 2**64 - 1


def test_numpy_dtypes_without_a_protocol_datatype_are_refused() -> None:
    with pytest.raises(codec.CodecError, match="complex64"):
        codec.wire_array("z", np.zeros(2, np.complex64))
