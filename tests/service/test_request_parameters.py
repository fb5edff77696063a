"""Request parameters (service/dataplane/admission.py): one the server does not read is
refused, naming it and the nearest known one, over gRPC and REST; Triton's own parameters,
which its clients send and the server ignores, pass; `--allow-unknown-parameters` lets any
through."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from rnnserve.client.client import RnnClient
from rnnserve.client.errors import InvalidArgument

X = np.zeros((1, 2, 1), np.float32)


def rest_infer(server, model: str, parameters: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    body = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2, 1], "data": [0, 0]}],
        "parameters": parameters,
    }
    return server.rest_infer(model, body)


def test_a_misspelt_parameter_is_refused_naming_the_one_meant(client) -> None:
    with pytest.raises(InvalidArgument) as refused:
        client.infer("sine-gru", {"x": X}, parameters={"sequense_id": 7, "sequence_start": True})

    assert refused.value.message.startswith(
        "unknown request parameter 'sequense_id' (did you mean 'sequence_id'?); the server "
        "reads max_output_length, sequence_end, sequence_id, sequence_offset, sequence_start"
    )
    assert "--allow-unknown-parameters" in refused.value.message


def test_a_misspelt_parameter_is_refused_over_rest(server) -> None:
    status, body = rest_infer(server, "seq2seq-gru", {"max_output_lenght": 3})

    assert status == 400 and body["code"] == "INVALID_ARGUMENT"
    assert "'max_output_lenght' (did you mean 'max_output_length'?)" in body["error"]


def test_a_parameter_like_none_known_is_refused_without_a_guess(client) -> None:
    with pytest.raises(InvalidArgument, match=r"parameter 'colour'; the server reads"):
        client.infer("sine-gru", {"x": X}, parameters={"colour": 1})


def test_a_parameter_another_task_reads_is_unknown_to_this_one(client) -> None:
    with pytest.raises(
        InvalidArgument,
        match=r"'max_output_length'; model 'tagger-gru' reads sequence_end, sequence_id, "
        r"sequence_offset, sequence_start \(",
    ):
        client.infer("tagger-gru", {"text": ["hello"]}, parameters={"max_output_length": 3})


def test_tritons_parameters_pass(client, server) -> None:
    triton = {
        "priority": 1,
        "timeout": 1_000_000,
        "triton_enable_empty_final_response": True,
        "binary_data_output": False,
    }
    client.infer("sine-gru", {"x": X}, parameters=triton)
    status, _ = rest_infer(server, "sine-gru", triton)
    assert status == 200


def test_allow_unknown_parameters_lets_any_through(start_server, sine_repository) -> None:
    server = start_server(sine_repository, args=["--allow-unknown-parameters"])
    with RnnClient(server.address) as lenient:
        lenient.infer("sine-lstm", {"x": X}, parameters={"my_trace_id": "abc"})
    status, _ = rest_infer(server, "sine-lstm", {"my_trace_id": "abc"})
    assert status == 200
