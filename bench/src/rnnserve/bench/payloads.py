"""The messages the benchmarks send and the echo server answers: one step of a sine model
(one FP32 value in, one out), as protobuf for Python and as protobuf JSON for k6."""

from __future__ import annotations

import base64
import struct
from typing import Any

STEP_INPUT = struct.pack("<f", 0.5)
STEP_OUTPUT = struct.pack("<f", 0.25)


def step_request_json(model_name: str, steps: int = 1) -> dict[str, Any]:
    """One sine step (or `steps` of them) asking only for `y`: in a session the state stays
    on the server; outside one, the request is all there is."""
    return {
        "model_name": model_name,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": ["1", str(steps), "1"]}],
        "outputs": [{"name": "y"}],
        "raw_input_contents": [base64.b64encode(STEP_INPUT * steps).decode()],
    }


def rows_request_json(model_name: str, rows: int) -> dict[str, Any]:
    """One step for each of `rows` sessions, without its control tensors: the load generator
    appends `sequence_id` (UINT64 [rows]) and, when the rows start, `sequence_start`
    (BOOL [rows]) after `x`, as raw contents like `x`."""
    return {
        "model_name": model_name,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [str(rows), "1", "1"]}],
        "outputs": [{"name": "y"}],
        "raw_input_contents": [base64.b64encode(STEP_INPUT * rows).decode()],
    }


def sequence_parameters(sequence_id: int, *, start: bool, end: bool = False) -> dict[str, Any]:
    """Triton's sequence parameters, as protobuf JSON."""
    parameters: dict[str, Any] = {"sequence_id": {"int64_param": str(sequence_id)}}
    if start:
        parameters["sequence_start"] = {"bool_param": True}
    if end:
        parameters["sequence_end"] = {"bool_param": True}
    return parameters


def step_request(model_name: str, sequence_id: int = 0, *, start: bool = False) -> Any:
    """`step_request_json` as a ModelInferRequest, with sequence parameters when an id is given."""
    from google.protobuf import json_format

    from rnnserve.protocol import messages as pb

    message = dict(step_request_json(model_name))
    if sequence_id:
        message["parameters"] = sequence_parameters(sequence_id, start=start)
    return json_format.ParseDict(message, pb.ModelInferRequest())


def step_response(model_name: str) -> Any:
    """What the server answers to one sine step: `y` FP32 [1,1,1]."""
    from rnnserve.protocol import messages as pb

    response = pb.ModelInferResponse(model_name=model_name, model_version="1")
    response.outputs.add(name="y", datatype="FP32", shape=[1, 1, 1])
    response.raw_output_contents.append(STEP_OUTPUT)
    return response
