"""The server's logs, read from real server processes: JSON lines with stable keys, the
access log (a line per request, over gRPC and REST, with the request id taken from `id` or
`x-request-id` and echoed), warnings once per cause, session expiry at DEBUG. (A line
logged while answering a request carries its id: tests/service/test_data_errors.py.)"""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

import grpc
import numpy as np
import pytest

from rnnserve.client.client import RnnClient, build_request

X = np.zeros((1, 2, 1), np.float32)
EXPIRY_TIMEOUT_S = 60.0
ACCESS_FIELDS = {
    "protocol", "rpc", "model", "version", "code", "duration_ms", "request_id", "sequence_id",
    "principal",
}  # fmt: skip


@pytest.fixture(scope="module")
def json_server(start_module_server, tiny_repository):
    """A server logging JSON lines, the access log on, DEBUG, sessions idle for 0.5 s."""
    return start_module_server(
        tiny_repository,
        args=[
            "--log-format", "json", "--access-log", "--log-level", "DEBUG",
            "--session-idle-timeout-s", "0.5",
            "--providers", "NoSuchExecutionProvider,CPUExecutionProvider",
        ],
    )  # fmt: skip


def lines(server) -> list[dict[str, Any]]:
    return [json.loads(line) for line in server.log().splitlines()]


def access_lines(server, request_id: str) -> list[dict[str, Any]]:
    return [
        line for line in lines(server)
        if line["logger"] == "rnnserve.access" and line["request_id"] == request_id
    ]  # fmt: skip


def test_every_line_is_json_with_stable_keys(json_server) -> None:
    with RnnClient(json_server.address) as client:
        client.infer("sine-gru", {"x": X})

    for line in lines(json_server):
        assert {"time", "level", "logger", "message", "pid"} <= set(line)
        assert line["time"].endswith("Z")


def test_grpc_access_line_takes_the_id_field(json_server) -> None:
    request = build_request(
        "sine-gru", {"x": X}, ["y"], {"sequence_id": 77, "sequence_start": True}
    )
    request.id = "grpc-id-1"

    _, call = json_server.stub.ModelInfer.with_call(request, timeout=30)

    [line] = access_lines(json_server, "grpc-id-1")
    assert set(line) >= ACCESS_FIELDS
    assert line["protocol"] == "grpc" and line["rpc"] == "ModelInfer"
    assert (line["model"], line["version"], line["code"]) == ("sine-gru", "1", "OK")
    assert line["sequence_id"] == "77" and line["principal"] == "anonymous"
    assert line["duration_ms"] >= 0
    assert ("x-request-id", "grpc-id-1") in call.initial_metadata()


def test_grpc_access_line_takes_the_x_request_id_metadata(json_server) -> None:
    request = build_request("sine-gru", {"x": X}, ["y"])

    _, call = json_server.stub.ModelInfer.with_call(
        request, metadata=[("x-request-id", "grpc-header-1")], timeout=30
    )

    [line] = access_lines(json_server, "grpc-header-1")
    assert line["rpc"] == "ModelInfer"
    assert ("x-request-id", "grpc-header-1") in call.initial_metadata()


def test_a_stream_echoes_its_x_request_id_which_names_its_requests_without_an_id(
    json_server,
) -> None:
    named = build_request("sine-gru", {"x": X}, ["y"])
    named.id = "stream-request-1"
    unnamed = build_request("sine-gru", {"x": X}, ["y"])

    call = json_server.stub.ModelStreamInfer(
        iter([named, unnamed]), metadata=[("x-request-id", "stream-1")], timeout=30
    )
    replies = list(call)

    assert [reply.error_message for reply in replies] == ["", ""]
    assert [reply.infer_response.id for reply in replies] == ["stream-request-1", ""]
    assert ("x-request-id", "stream-1") in call.initial_metadata()
    [first] = access_lines(json_server, "stream-request-1")
    [second] = access_lines(json_server, "stream-1")
    assert first["rpc"] == second["rpc"] == "ModelStreamInfer"
    assert first["code"] == second["code"] == "OK"


def test_a_refusal_is_logged_with_its_code_and_the_version_that_would_run(json_server) -> None:
    request = build_request("sine-gru", {"x": np.zeros((0, 2, 1), np.float32)})
    request.id = "grpc-refused-1"

    with pytest.raises(grpc.RpcError):
        json_server.stub.ModelInfer(request, timeout=30)

    [line] = access_lines(json_server, "grpc-refused-1")
    assert (line["code"], line["version"]) == ("INVALID_ARGUMENT", "1")


def test_rest_access_line_takes_the_x_request_id_header(json_server) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", json_server.http_port, timeout=30)
    connection.request("GET", "/v2/models/tagger-gru", headers={"x-request-id": "rest-1"})
    assert connection.getresponse().status == 200
    connection.close()

    [line] = access_lines(json_server, "rest-1")
    assert (line["protocol"], line["rpc"], line["model"]) == ("http", "ModelMetadata", "tagger-gru")


def test_a_missing_provider_is_warned_once(json_server) -> None:
    warnings = [line["message"] for line in lines(json_server) if line["level"] == "WARNING"]

    said = [message for message in warnings if "NoSuchExecutionProvider" in message]
    assert len(said) == 1  # for nine models
    assert "this ONNX Runtime build lacks it" in said[0]


def test_session_expiry_is_logged_at_debug(json_server) -> None:
    with RnnClient(json_server.address) as client:
        client.infer(
            "sine-rnn", {"x": X}, parameters={"sequence_id": "idle-1", "sequence_start": True}
        )

    deadline = time.monotonic() + EXPIRY_TIMEOUT_S
    expired = "sequence 'idle-1' for model sine-rnn version 1 expired (idle for 0.5 s)"
    while not any(line["message"] == expired for line in lines(json_server)):
        assert time.monotonic() < deadline, "the expiry was never logged"
        time.sleep(0.1)
    [line] = [line for line in lines(json_server) if line["message"] == expired]
    assert line["level"] == "DEBUG"


def test_text_access_lines(start_server, tiny_repository) -> None:
    server = start_server(tiny_repository, args=["--access-log"])
    with RnnClient(server.address) as client:
        client.infer("sine-gru", {"x": X}, parameters={"sequence_id": 5, "sequence_start": True})

    [line] = [line for line in server.log().splitlines() if "rpc=ModelInfer" in line]
    assert (
        "INFO rnnserve.access: protocol=grpc rpc=ModelInfer model=sine-gru version=1 code=OK"
        in line
    )
    assert 'request_id="" sequence_id=5 principal=anonymous' in line


def test_no_access_log_unless_asked(server) -> None:
    with RnnClient(server.address) as client:
        client.infer("sine-gru", {"x": X})

    assert "rnnserve.access" not in server.log()
