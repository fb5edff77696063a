"""The REST API with curl, as a user reaches it: every route, JSON and binary tensors,
errors as JSON with the HTTP status of their gRPC code, request ids echoed."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
from google.protobuf import json_format
from rest_helpers import SINE_X, Answer, curl, post_json, sine_body, text_body

from rnnserve.client.client import build_request, decode_response
from rnnserve.client.errors import InferenceError
from rnnserve.client.rest import RestClient
from rnnserve.protocol import messages as pb
from rnnserve.protocol import rest
from rnnserve.service.rest.converter import message_to_json

MODELS = [
    f"{task}-{cell}" for task in ("sine", "tagger", "seq2seq") for cell in ("rnn", "lstm", "gru")
]


def infer_url(server, model: str, version: str = "") -> str:
    versions = f"/versions/{version}" if version else ""
    return f"{server.http_url}/v2/models/{model}{versions}/infer"


# Health and metadata -------------------------------------------------------------------


@pytest.mark.parametrize("route", ["/v2/health/live", "/v2/health/ready"])
def test_health_says_200_with_no_body(server, route: str) -> None:
    answer = curl(server.http_url + route)

    assert (answer.status, answer.body) == (200, b"")


def test_server_metadata(server) -> None:
    metadata = curl(server.http_url + "/v2").json()

    assert metadata["name"] == "rnnserve"
    assert {"sequence", "streaming", "model_configuration"} <= set(metadata["extensions"])


def test_model_metadata_with_and_without_version(server) -> None:
    newest = curl(f"{server.http_url}/v2/models/sine-lstm").json()
    first = curl(f"{server.http_url}/v2/models/sine-lstm/versions/1").json()

    assert newest == first
    assert newest["versions"] == ["1"] and newest["platform"] == "onnxruntime_onnx"
    assert {"name": "x", "datatype": "FP32", "shape": [-1, -1, 1]} in newest["inputs"]
    assert newest["parameters"]["state_inputs"] == "h0,c0"


def test_model_metadata_matches_grpc(server) -> None:
    over_grpc = server.stub.ModelMetadata(pb.ModelMetadataRequest(name="tagger-gru"))

    over_rest = curl(f"{server.http_url}/v2/models/tagger-gru").json()

    assert [(t["name"], t["datatype"], t["shape"]) for t in over_rest["outputs"]] == [
        (t.name, t.datatype, list(t.shape)) for t in over_grpc.outputs
    ]


@pytest.mark.parametrize("model", MODELS)
def test_every_default_model_is_ready(server, model: str) -> None:
    assert curl(f"{server.http_url}/v2/models/{model}/ready").status == 200


def test_an_unknown_model_is_not_ready(server) -> None:
    assert curl(f"{server.http_url}/v2/models/nope/ready").status == 400


def test_model_config_is_the_grpc_config_as_json(server) -> None:
    over_grpc = server.stub.ModelConfig(pb.ModelConfigRequest(name="sine-gru")).config

    config = curl(f"{server.http_url}/v2/models/sine-gru/config").json()

    assert config == message_to_json(over_grpc)
    assert config["max_batch_size"] == 1024  # 64-bit integers as JSON numbers
    assert config["input"][0] == {
        **config["input"][0], "name": "x", "data_type": "TYPE_FP32", "dims": [-1, 1]
    }  # fmt: skip
    json_format.ParseDict(config, pb.ModelConfig())  # reads back as Triton's message


def test_statistics_of_one_model_and_of_all(server) -> None:
    post_json(infer_url(server, "sine-rnn"), sine_body())

    one = curl(f"{server.http_url}/v2/models/sine-rnn/stats").json()["model_stats"]
    every = curl(f"{server.http_url}/v2/models/stats").json()["model_stats"]

    assert [(s["name"], s["version"]) for s in one] == [("sine-rnn", "1")]
    assert one[0]["inference_stats"]["success"]["count"] >= 1
    assert {s["name"] for s in every} == set(MODELS)


def test_repository_index(server) -> None:
    index = post_json(server.http_url + "/v2/repository/index", {"ready": True}).json()

    assert {(m["name"], m["version"], m["state"]) for m in index} == {
        (name, "1", "READY") for name in MODELS
    }


# Inference -----------------------------------------------------------------------------


def test_sine_over_json_matches_grpc(server) -> None:
    grpc_y = outputs_over_grpc(server, "sine-gru", SINE_X)

    answer = post_json(infer_url(server, "sine-gru"), sine_body(outputs=[{"name": "y"}]))

    assert answer.status == 200 and answer.headers["content-type"] == "application/json"
    [y] = answer.json()["outputs"]
    assert (y["name"], y["datatype"], y["shape"]) == ("y", "FP32", [2, 7, 1])
    np.testing.assert_array_equal(np.array(y["data"], np.float32).reshape(2, 7, 1), grpc_y)


def outputs_over_grpc(server, model: str, x: np.ndarray) -> np.ndarray:
    reply = server.stub.ModelInfer(build_request(model, {"x": x}, ["y"]))
    return decode_response(reply).outputs["y"]


def test_tagger_text_goes_as_json_strings(server) -> None:
    answer = post_json(infer_url(server, "tagger-lstm"), text_body("hello"))

    outputs = {o["name"]: o for o in answer.json()["outputs"]}
    assert outputs["text_out"]["data"] == ["ohlol"]
    assert set(outputs) == {"text_out", "hn", "cn"}  # the default outputs and the states


def test_seq2seq_takes_max_output_length(server) -> None:
    body = text_body("hello", parameters={"max_output_length": 2})

    [text_out] = post_json(infer_url(server, "seq2seq-gru", "1"), body).json()["outputs"]

    assert len(text_out["data"][0]) <= 2


def test_nested_json_data_is_read_row_major(server) -> None:
    flat = post_json(infer_url(server, "sine-gru"), sine_body()).json()
    nested = sine_body()
    nested["inputs"][0]["data"] = SINE_X.tolist()

    assert post_json(infer_url(server, "sine-gru"), nested).json() == flat


def test_binary_tensors_both_ways_with_curl(server) -> None:
    """Triton's binary tensor data extension, written out by hand."""
    header = json.dumps({
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3, 1],
                    "parameters": {"binary_data_size": 12}}],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
    }).encode()  # fmt: skip
    x = np.array([0.0, 0.5, 1.0], np.float32)

    answer = curl(
        infer_url(server, "sine-lstm"),
        "-H", f"Inference-Header-Content-Length: {len(header)}",
        "-H", "Content-Type: application/octet-stream",
        data=header + struct.pack("<3f", *x),
    )  # fmt: skip

    length = int(answer.headers[rest.HEADER_LENGTH.lower()])
    [y] = json.loads(answer.body[:length])["outputs"]
    assert y["parameters"] == {"binary_data_size": 12} and "data" not in y
    binary_y = np.frombuffer(answer.body[length:], "<f4")
    np.testing.assert_array_equal(
        binary_y, outputs_over_grpc(server, "sine-lstm", x[None, :, None]).ravel()
    )


def test_compressed_bodies_both_ways(server) -> None:
    body = gzip.compress(json.dumps(text_body("hello", outputs=[{"name": "text_out"}])).encode())

    answer = curl(
        infer_url(server, "tagger-gru"),
        "-H", "Content-Encoding: gzip", "-H", "Accept-Encoding: gzip", data=body,
    )  # fmt: skip

    assert answer.headers["content-encoding"] == "gzip"
    assert json.loads(gzip.decompress(answer.body))["outputs"][0]["data"] == ["ohlol"]


def test_a_sequence_over_rest_equals_the_whole(server) -> None:
    whole = np.array(
        post_json(infer_url(server, "sine-gru"), sine_body(SINE_X[:1])).json()["outputs"][0]["data"]
    )
    pieces = []
    for index, (begin, end) in enumerate([(0, 3), (3, 5), (5, 7)]):
        parameters = {"sequence_id": 1501, "sequence_start": index == 0, "sequence_end": end == 7}
        body = sine_body(SINE_X[:1, begin:end], parameters=parameters, outputs=[{"name": "y"}])
        pieces += post_json(infer_url(server, "sine-gru"), body).json()["outputs"][0]["data"]

    np.testing.assert_allclose(pieces, whole[: len(pieces)], rtol=1e-6, atol=1e-6)


def test_a_multi_session_request_over_rest(server) -> None:
    body = text_body("he", "ll")
    body["inputs"] += [
        {"name": "sequence_id", "datatype": "UINT64", "shape": [2], "data": [1601, 1602]},
        {"name": "sequence_start", "datatype": "BOOL", "shape": [2], "data": [True, True]},
        {"name": "sequence_end", "datatype": "BOOL", "shape": [2], "data": [True, False]},
    ]
    body["outputs"] = [{"name": "text_out"}, {"name": "sequence_error"}]

    outputs = {
        o["name"]: o["data"]
        for o in post_json(infer_url(server, "tagger-rnn"), body).json()["outputs"]
    }

    assert outputs["sequence_error"] == ["", ""]
    assert len(outputs["text_out"]) == 2


def test_sequence_offsets_over_rest_apply_once_and_resynchronise(server) -> None:
    """A retry is answered again, a gap refused with the server's count in a header and a
    field of the JSON error, which RestClient reads as InferenceError.sequence_offset."""
    url = infer_url(server, "sine-gru")

    def step(begin: int, end: int, offset: int, start: bool = False) -> Answer:
        parameters = {"sequence_id": 1701, "sequence_start": start, "sequence_offset": offset}
        return post_json(url, sine_body(SINE_X[:1, begin:end], parameters=parameters))

    assert step(0, 3, 0, start=True).json()["parameters"]["sequence_offset"] == 3
    second = step(3, 5, 3)
    retried = step(3, 5, 3)
    assert retried.json() == second.json()
    assert second.json()["parameters"]["sequence_offset"] == 5

    gap = step(5, 7, 6)
    assert gap.status == 400 and gap.headers["sequence-offset"] == "5"
    assert gap.json()["code"] == "FAILED_PRECONDITION" and gap.json()["sequence_offset"] == 5
    assert "the server has applied 5 time steps" in gap.json()["error"]
    with RestClient(server.http_url) as client, pytest.raises(InferenceError) as raised:
        client.infer_response("sine-gru", {"x": SINE_X[:1, 5:7]}, ["y"],
                              {"sequence_id": 1701, "sequence_offset": 4})  # fmt: skip
    assert raised.value.code == "FAILED_PRECONDITION" and raised.value.sequence_offset == 5


def test_multi_session_offsets_over_rest(server) -> None:
    body = text_body("he", "ll")
    body["inputs"] += [
        {"name": "sequence_id", "datatype": "UINT64", "shape": [2], "data": [1801, 1802]},
        {"name": "sequence_start", "datatype": "BOOL", "shape": [2], "data": [True, False]},
        {"name": "sequence_offset", "datatype": "INT64", "shape": [2], "data": [0, 4]},
    ]
    body["outputs"] = [{"name": "sequence_error"}, {"name": "sequence_offset"}]

    outputs = {
        o["name"]: o["data"]
        for o in post_json(infer_url(server, "tagger-rnn"), body).json()["outputs"]
    }

    assert outputs["sequence_offset"] == [2, 0]  # 1802 was never started
    assert outputs["sequence_error"][0] == "" and "is not active" in outputs["sequence_error"][1]


# Errors --------------------------------------------------------------------------------

CLASSIFIED = {"name": "y", "parameters": {"classification": 2}}  # Triton's, which we lack


@pytest.mark.parametrize(
    ("body", "status", "code", "words"),
    [
        (b"{not json", 400, "INVALID_ARGUMENT", "not JSON"),
        (b'{"inputs": 3}', 400, "INVALID_ARGUMENT", "'inputs' must be a JSON array"),
        (json.dumps(sine_body(SINE_X[:0])).encode(), 400, "INVALID_ARGUMENT", "batch size 0"),
        (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2, 1],
                                 "data": ["a", "b"]}]}).encode(),
         400, "INVALID_ARGUMENT", 'FP32 data must be JSON numbers, found "a"'),
        (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3, 1],
                                 "data": [1, 2]}]}).encode(),
         400, "INVALID_ARGUMENT", "data holds 2 elements, shape [1, 3, 1] needs 3"),
        (json.dumps(sine_body(outputs=[CLASSIFIED])).encode(),
         400, "INVALID_ARGUMENT", "'classification' is not supported"),
    ],
    ids=[
        "not-json", "inputs-not-a-list", "batch-0", "strings-for-fp32", "short-data",
        "classification",
    ],
)  # fmt: skip
def test_malformed_requests_get_400_naming_the_field(
    server, body: bytes, status: int, code: str, words: str
) -> None:
    answer = curl(infer_url(server, "sine-lstm"), "-H", "Content-Type: application/json", data=body)

    assert answer.status == status
    assert answer.json()["code"] == code
    assert words in answer.json()["error"]


def test_an_unknown_model_is_404_whatever_the_body(server) -> None:
    answer = curl(infer_url(server, "nope"), data=b"{}")

    assert answer.status == 404
    assert answer.json()["code"] == "NOT_FOUND" and "unknown model 'nope'" in answer.json()["error"]


def test_failed_precondition_keeps_its_code(server) -> None:
    body = text_body("hello")
    body["inputs"].append({"name": "sequence_id", "datatype": "UINT64", "shape": [1], "data": [7]})

    answer = post_json(infer_url(server, "seq2seq-gru"), body)

    assert answer.status == 400
    assert answer.json()["code"] == "FAILED_PRECONDITION"
    assert "takes no multi-session requests" in answer.json()["error"]


def test_a_continuation_of_an_unknown_sequence_is_refused(server) -> None:
    body = sine_body(SINE_X[:1], parameters={"sequence_id": 99_000_001})

    answer = post_json(infer_url(server, "sine-rnn"), body)

    assert answer.status == 400 and "is not active" in answer.json()["error"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/v3", 404), ("POST", "/v2", 405), ("GET", "/v2/models/sine-gru/infer", 405)],
)
def test_unknown_routes_and_methods_answer_json(
    server, method: str, path: str, status: int
) -> None:
    answer = curl(server.http_url + path, "-X", method)

    assert answer.status == status
    assert answer.json()["error"]


# Request ids ---------------------------------------------------------------------------


def test_the_x_request_id_header_is_echoed(server) -> None:
    answer = curl(f"{server.http_url}/v2/models/sine-gru", "-H", "x-request-id: trace-42")

    assert answer.headers["x-request-id"] == "trace-42"


def test_the_body_id_is_echoed_in_body_and_header(server) -> None:
    answer = post_json(infer_url(server, "sine-gru"), sine_body(id="req-7"))

    assert answer.json()["id"] == "req-7"
    assert answer.headers["x-request-id"] == "req-7"
