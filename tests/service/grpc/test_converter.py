"""Protobuf messages <-> the server's types: every datatype in both encodings, and every
conversion error naming the input and what was expected."""

from __future__ import annotations

import numpy as np
import pytest

from rnnserve.client.client import build_request, decode_response
from rnnserve.protocol import codec
from rnnserve.protocol import messages as pb
from rnnserve.service.errors import InvalidArgument
from rnnserve.service.grpc import converter
from rnnserve.service.types import InferResponse, Tensor

NUMERIC = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
           "FP16", "FP32", "FP64"]  # fmt: skip


def sample(datatype: str) -> np.ndarray:
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    dtype = codec.DTYPES[datatype]
    return (np.arange(6).reshape(2, 3) * 3).astype(dtype)


def one_input(datatype: str, shape: list[int], **fields) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype=datatype, shape=shape, **fields)
    return request


@pytest.mark.parametrize("datatype", NUMERIC)
def test_raw_input_round_trips_every_numeric_datatype(datatype: str) -> None:
    data = sample(datatype)
    request = build_request("m", {"x": data})

    (tensor,) = converter.request_from_proto(request).inputs

    assert tensor.datatype == datatype
    assert tensor.shape == (2, 3)
    np.testing.assert_array_equal(tensor.data, data)
    assert tensor.data.dtype == data.dtype


@pytest.mark.parametrize("datatype", [d for d in NUMERIC if d != "FP16"])
def test_typed_contents_are_read_for_every_datatype_that_has_a_field(datatype: str) -> None:
    data = sample(datatype)
    field = codec.CONTENTS_FIELD[datatype]
    request = one_input(datatype, [2, 3], contents={field: data.reshape(-1).tolist()})

    (tensor,) = converter.request_from_proto(request).inputs

    np.testing.assert_array_equal(tensor.data, data)
    assert tensor.data.dtype == codec.DTYPES[datatype]


def test_bytes_contents_become_an_object_array() -> None:
    request = one_input("BYTES", [2, 1], contents={"bytes_contents": [b"a", b"bc"]})

    (tensor,) = converter.request_from_proto(request).inputs

    assert tensor.data.shape == (2, 1)
    assert tensor.data[1, 0] == b"bc"


def test_response_outputs_go_back_raw_with_their_shapes() -> None:
    response = InferResponse(
        "m", "1", "id-9",
        outputs=[Tensor("y", "FP32", (1, 2, 1), np.ones((1, 2, 1), np.float32)),
                 Tensor("text_out", "BYTES", (1,), np.array([b"ok"], dtype=object))],
        parameters={"triton_final_response": True},
    )  # fmt: skip

    message = converter.response_to_proto(response)

    assert [o.name for o in message.outputs] == ["y", "text_out"]
    assert list(message.outputs[0].shape) == [1, 2, 1]
    assert not message.outputs[0].HasField("contents")
    assert message.raw_output_contents[0] == np.ones(2, "<f4").tobytes()
    assert message.parameters["triton_final_response"].bool_param is True
    assert decode_response(message).outputs["text_out"].tolist() == [b"ok"]


def test_request_outputs_and_parameters_are_carried() -> None:
    request = one_input("FP32", [1], contents={"fp32_contents": [1.0]})
    request.outputs.add(name="y")
    request.parameters["sequence_id"].uint64_param = 2**63 + 5
    request.parameters["sequence_start"].bool_param = True
    request.parameters["name"].string_param = "s"
    request.parameters["scale"].double_param = 0.5
    request.parameters["max_output_length"].int64_param = 7

    converted = converter.request_from_proto(request)

    assert converted.outputs == ["y"]
    assert converted.parameters == {
        "sequence_id": 2**63 + 5, "sequence_start": True, "name": "s", "scale": 0.5,
        "max_output_length": 7,
    }  # fmt: skip


def _raw(request: pb.ModelInferRequest, *raw: bytes) -> pb.ModelInferRequest:
    request.raw_input_contents.extend(raw)
    return request


BAD = [
    ("unknown datatype", one_input("FP8", [1]), "input 'x': unknown datatype 'FP8'"),
    ("negative dimension", one_input("FP32", [2, -1]),
     "input 'x': shape [2, -1] has a negative dimension"),
    ("raw size", _raw(one_input("FP32", [2]), b"\0" * 7),
     "input 'x': raw_input_contents holds 7 bytes; shape [2] of FP32 needs 8"),
    ("raw count", _raw(one_input("FP32", [1]), b"", b""),
     "raw_input_contents has 2 entries; expected one per input (1)"),
    ("both encodings", _raw(one_input("FP32", [1], contents={"fp32_contents": [1.0]}), b"\0" * 4),
     "input 'x': give its data in contents or in raw_input_contents, not both"),
    ("element count", one_input("INT64", [3], contents={"int64_contents": [1, 2]}),
     "input 'x': contents.int64_contents holds 2 elements, shape [3] needs 3"),
    ("wrong field", one_input("INT32", [1], contents={"fp32_contents": [1.0]}),
     "input 'x': datatype INT32 carries its data in contents.int_contents"),
    ("fp16 typed", one_input("FP16", [1]), "input 'x': FP16 data must come in raw_input_contents"),
    ("value too large", one_input("INT8", [1], contents={"int_contents": [1000]}),
     "input 'x': a value does not fit INT8"),
    ("bytes prefix cut", _raw(one_input("BYTES", [1]), b"\x05\x00"),
     "input 'x': BYTES data ends inside a length prefix"),
    ("bytes element cut", _raw(one_input("BYTES", [1]), b"\x05\x00\x00\x00ab"),
     "input 'x': BYTES element 0 claims 5 bytes, only 2 remain"),
    ("bytes count", _raw(one_input("BYTES", [2]), b"\x01\x00\x00\x00a"),
     "input 'x': BYTES data holds 1 elements, shape needs 2"),
    ("parameter without value", pb.ModelInferRequest(parameters={"p": pb.InferParameter()}),
     "request parameter 'p' has no value"),
]  # fmt: skip


@pytest.mark.parametrize(("request_", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_malformed_tensors_are_refused_with_the_reason(
    request_: pb.ModelInferRequest, message: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        converter.request_from_proto(request_)

    assert message in caught.value.message


def test_a_duplicated_input_name_is_refused() -> None:
    request = one_input("FP32", [1], contents={"fp32_contents": [1.0]})
    request.inputs.add(name="x", datatype="FP32", shape=[1], contents={"fp32_contents": [2.0]})

    with pytest.raises(InvalidArgument, match="input 'x' appears more than once"):
        converter.request_from_proto(request)


def test_zero_sized_tensors_pass_through_for_the_data_plane_to_judge() -> None:
    request = build_request("m", {"x": np.zeros((0, 3, 1), np.float32)})

    (tensor,) = converter.request_from_proto(request).inputs

    assert tensor.shape == (0, 3, 1)
