"""Model control against real servers, driven by Triton's own client: explicit load and
unload, polling the repository while sessions run, health that agrees with the index."""

from __future__ import annotations

import shutil
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from polling import eventually
from tritonclient.utils import InferenceServerException

from rnnserve.client.client import RnnClient
from rnnserve.protocol import messages as pb

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def repository(tiny_repository: Path, root: Path, *names: str) -> Path:
    for name in names:
        shutil.copytree(tiny_repository / name / "1", root / name / "1")
    return root


def add_version(source: Path, model: Path, version: str) -> None:
    """As a deployment adds one: written aside, renamed into place whole."""
    staging = model.parent / f".staging-{model.name}-{version}"
    shutil.copytree(source, staging)
    staging.rename(model / version)


def health(server, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(server.channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


def index(client: triton.InferenceServerClient) -> dict[tuple[str, str], tuple[str, str]]:
    models = client.get_model_repository_index(as_json=True).get("models", [])
    return {
        (m["name"], m.get("version", "")): (m.get("state", ""), m.get("reason", "")) for m in models
    }


def sine_input(steps: int, seed: int = 0) -> triton.InferInput:
    x = np.random.default_rng(seed).standard_normal((1, steps, 1)).astype(np.float32)
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def test_explicit_control_loads_and_unloads_with_tritons_client(
    tiny_repository, tmp_path, start_server
) -> None:
    root = repository(tiny_repository, tmp_path, "sine-gru", "sine-lstm")
    server = start_server(
        root, args=["--model-control-mode", "explicit", "--load-model", "sine-gru"]
    )
    client = triton.InferenceServerClient(server.address)

    state, reason = index(client)[("sine-lstm", "1")]
    assert state == "UNAVAILABLE" and "load it with RepositoryModelLoad" in reason
    assert not client.is_model_ready("sine-lstm")
    client.load_model("sine-lstm")
    assert client.is_model_ready("sine-lstm") and health(server, "sine-lstm") == SERVING
    assert client.infer("sine-lstm", [sine_input(3)]).as_numpy("y").shape == (1, 3, 1)

    client.unload_model("sine-gru")

    assert not client.is_model_ready("sine-gru") and health(server, "sine-gru") == NOT_SERVING
    assert index(client)[("sine-gru", "1")] == ("UNAVAILABLE", "unloaded")
    with pytest.raises(InferenceServerException, match=r"no version loaded \(version 1: unloaded"):
        client.infer("sine-gru", [sine_input(3)])
    with pytest.raises(InferenceServerException, match="no model folder 'nope'") as missing:
        client.load_model("nope")
    assert missing.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException, match=r"parameters \['config'\]") as configured:
        client.load_model("sine-gru", config="{}")
    assert configured.value.status() == "StatusCode.INVALID_ARGUMENT"
    client.load_model("sine-gru")
    assert client.is_model_ready("sine-gru") and client.is_server_ready()
    client.close()


def queue_observations(server, model: str) -> float:
    """How many requests of `model` began their work (rnnserve_queue_duration_seconds)."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("rnnserve_queue_duration_seconds_count") and f'"{model}"' in line:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_an_unloaded_version_finishes_its_requests_then_refuses_its_sessions(
    tiny_repository, tmp_path, start_server
) -> None:
    root = repository(tiny_repository, tmp_path, "sine-lstm")
    # The long request implies more than the default max_request_elements allows.
    server = start_server(
        root,
        args=["--model-control-mode", "explicit", "--load-model", "*",
              "--max-request-elements", "200000000"],
    )  # fmt: skip
    client = triton.InferenceServerClient(server.address)
    client.infer("sine-lstm", [sine_input(4)], sequence_id=9, sequence_start=True)
    # A request long enough to be in flight when the unload comes (~1 s of ORT work).
    long_x = np.random.default_rng(1).standard_normal((1024, 3000, 1)).astype(np.float32)
    answers: list[object] = []

    def long_request() -> None:
        with RnnClient(server.address, timeout_s=300) as rnn:
            try:
                answers.append(rnn.infer("sine-lstm", {"x": long_x}, outputs=["y"])["y"].shape)
            except Exception as error:
                answers.append(error)

    before = queue_observations(server, "sine-lstm")
    thread = threading.Thread(target=long_request)
    thread.start()
    eventually(lambda: queue_observations(server, "sine-lstm") > before, "the long request began")
    client.unload_model("sine-lstm")  # returns once the requests in flight finished
    thread.join(timeout=300)

    assert answers == [(1024, 3000, 1)]
    with pytest.raises(InferenceServerException) as refused:
        client.infer("sine-lstm", [sine_input(2)], sequence_id=9)
    assert "not loaded any more (unloaded): its state went with it" in refused.value.message()
    # The same files loaded again: the session goes on, as across a restart.
    client.load_model("sine-lstm")
    assert client.infer("sine-lstm", [sine_input(2)], sequence_id=9).as_numpy("y").shape == (
        1, 2, 1,
    )  # fmt: skip
    client.close()


def test_polling_follows_the_repository_while_sessions_run(
    tiny_repository, tmp_path, start_server
) -> None:
    root = repository(tiny_repository, tmp_path, "sine-gru")
    server = start_server(root, args=["--model-control-mode", "poll", "--repository-poll-s", "0.2"])
    client = triton.InferenceServerClient(server.address)
    old = client.infer("sine-gru", [sine_input(3, seed=2)], sequence_id=1, sequence_start=True)
    assert old.get_response().model_version == "1"

    add_version(tiny_repository / "sine-gru" / "1", root / "sine-gru", "2")
    eventually(lambda: client.is_model_ready("sine-gru", "2"), "version 2 loaded")

    # The session begun on version 1 goes on there; a new one starts on the newest.
    going_on = client.infer("sine-gru", [sine_input(3, seed=3)], sequence_id=1)
    assert going_on.get_response().model_version == "1"
    new = client.infer("sine-gru", [sine_input(3)], sequence_id=2, sequence_start=True)
    assert new.get_response().model_version == "2"

    shutil.rmtree(root / "sine-gru" / "1")
    eventually(lambda: not client.is_model_ready("sine-gru", "1"), "version 1 unloaded")
    assert index(client)[("sine-gru", "1")] == (
        "UNAVAILABLE", "unloaded: its folder was removed",
    )  # fmt: skip
    with pytest.raises(
        InferenceServerException, match="on version 1, which is not loaded any more"
    ):
        client.infer("sine-gru", [sine_input(3)], sequence_id=1)
    assert (
        client.infer("sine-gru", [sine_input(3)], sequence_id=2).get_response().model_version == "2"
    )

    # Version 1 back with another graph: refused, its sessions' states belong to the old one.
    add_version(tiny_repository / "sine-rnn" / "1", root / "sine-gru", "1")
    eventually(lambda: index(client)[("sine-gru", "1")][0] == "UNAVAILABLE" and "served other "
               "files before" in index(client)[("sine-gru", "1")][1], "v1 refused")  # fmt: skip

    # A broken version is reported; the model goes on serving the version it has.
    (root / "sine-gru" / "3").mkdir()
    (root / "sine-gru" / "3" / "model.onnx").write_bytes(b"half a file")
    eventually(lambda: index(client).get(("sine-gru", "3"), ("",))[0] == "UNAVAILABLE", "v3 seen")
    assert health(server, "sine-gru") == SERVING and client.is_server_ready()
    client.close()


def test_health_index_and_start_up_line_agree_for_a_broken_model(
    tiny_repository, tmp_path, start_server
) -> None:
    root = repository(tiny_repository, tmp_path, "sine-gru")
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx file")

    lenient = start_server(root)
    strict = start_server(root, args=["--strict-readiness"], wait_ready=False)

    assert "ready: 1 model loaded, 1 failed (broken version 1)" in lenient.log()
    assert health(lenient, "") == SERVING and health(lenient, "sine-gru") == SERVING
    assert health(lenient, "broken") == NOT_SERVING
    assert not lenient.stub.ModelReady(pb.ModelReadyRequest(name="broken")).ready
    (entry,) = [
        m for m in lenient.stub.RepositoryIndex(pb.RepositoryIndexRequest()).models
        if m.name == "broken"
    ]  # fmt: skip
    assert entry.state == "UNAVAILABLE" and entry.reason.startswith("failed to load:")
    eventually(lambda: "not ready (--strict-readiness)" in strict.log(), "the strict start")
    assert not strict.stub.ServerReady(pb.ServerReadyRequest()).ready
    assert health(strict, "") == NOT_SERVING and health(strict, "sine-gru") == SERVING


def test_exit_on_error_stops_the_start_with_the_failure(
    tiny_repository, tmp_path, start_server
) -> None:
    root = repository(tiny_repository, tmp_path, "sine-gru")
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx file")

    server = start_server(root, args=["--exit-on-error"], wait_ready=False, exit_code=2)

    assert server.process.wait(timeout=120) == 2
    last = server.log().strip().splitlines()[-1]
    assert last.startswith("rnnserve serve: --exit-on-error: 1 model loaded, 1 failed")
    assert "broken version 1: failed to load" in last
