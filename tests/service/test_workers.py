"""`rnnserve serve --workers N`: several server processes on one port.

Each new connection may land on any worker and stays with it. A client cannot see which
worker answers, but each worker keeps its own model statistics: two connections whose
readings of one model's inference count differ, with no traffic in between, are on two
different workers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from processes import alive, worker_pids
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from scrape import scrape, series

from rnnserve.client.client import build_request, decode_response
from rnnserve.client.rest import RestClient
from rnnserve.protocol import messages as pb
from rnnserve.protocol import rpc
from rnnserve.service.workers import WorkerFiles

PROBE_MODEL = "tagger-rnn"  # only `other_worker` sends it requests
MAX_CONNECTIONS = 64  # new connections tried before concluding all land on one worker
X = np.linspace(0.0, 1.0, 8, dtype=np.float32).reshape(1, 8, 1)


def sine_request(model: str, x: np.ndarray, **parameters: int | bool) -> pb.ModelInferRequest:
    return build_request(model, {"x": x}, ["y"], parameters)


def y_of(reply: pb.ModelInferResponse) -> np.ndarray:
    return decode_response(reply).outputs["y"]


def connect(address: str) -> tuple[grpc.Channel, rpc.Stub]:
    """A channel with a connection of its own (channels share connections by default)."""
    channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    return channel, rpc.Stub(channel)


def probe_count(stub: rpc.Stub) -> int:
    reply = stub.ModelStatistics(pb.ModelStatisticsRequest(name=PROBE_MODEL), timeout=30)
    return reply.model_stats[0].inference_count


def other_worker(address: str, first: rpc.Stub) -> tuple[grpc.Channel, rpc.Stub]:
    """A new connection that reached another worker than `first`'s connection."""
    probe = build_request(PROBE_MODEL, {"text": ["hello"]})
    for _ in range(MAX_CONNECTIONS):
        channel, stub = connect(address)
        stub.ModelInfer(probe, timeout=30)
        if probe_count(stub) != probe_count(first):
            return channel, stub
        channel.close()
    raise AssertionError(f"{MAX_CONNECTIONS} new connections all reached one worker")


def workers_args(redis_url: str, workers: int = 2) -> list[str]:
    return ["--workers", str(workers), "--state-store", "owned", "--redis-url", redis_url]


@pytest.fixture(scope="module")
def workers(start_module_server, tiny_repository: Path, redis_url: str):
    return start_module_server(tiny_repository, args=workers_args(redis_url))


def test_new_connections_reach_more_than_one_worker_and_get_the_same_answers(workers) -> None:
    channel, stub = other_worker(workers.address, workers.stub)
    request = sine_request("sine-lstm", X)

    here, there = workers.stub.ModelInfer(request), stub.ModelInfer(request)

    np.testing.assert_array_equal(y_of(here), y_of(there))
    channel.close()


def test_metadata_and_health_answer_from_every_worker(workers) -> None:
    channel, stub = other_worker(workers.address, workers.stub)
    for each_channel, each_stub in [(workers.channel, workers.stub), (channel, stub)]:
        health = health_pb2_grpc.HealthStub(each_channel)
        checked = health.Check(health_pb2.HealthCheckRequest(service="sine-gru"), timeout=30)
        served = each_stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=30)
        model = each_stub.ModelMetadata(pb.ModelMetadataRequest(name="sine-gru"), timeout=30)

        assert checked.status == health_pb2.HealthCheckResponse.SERVING
        assert served.name == "rnnserve"
        assert model.name == "sine-gru"
    channel.close()


def test_rest_answers_on_the_workers_shared_port(workers) -> None:
    over_grpc = y_of(workers.stub.ModelInfer(sine_request("sine-lstm", X)))
    answers = []
    for _ in range(4):  # new connections, spread over the workers by the kernel
        with RestClient(workers.http_url) as client:
            assert client.server_ready()
            answers.append(client.infer_response("sine-lstm", {"x": X}, ["y"]).outputs["y"])

    for answer in answers:
        np.testing.assert_array_equal(answer.reshape(over_grpc.shape), over_grpc)


def test_metrics_add_up_across_workers(workers) -> None:
    channel, stub = other_worker(workers.address, workers.stub)
    request = sine_request("sine-rnn", X)
    for _ in range(3):
        workers.stub.ModelInfer(request)
    for _ in range(5):
        stub.ModelInfer(request)

    samples = scrape(workers.metrics_url)

    requests = series(
        "rnnserve_requests_total",
        code="OK", model="sine-rnn", protocol="grpc", rpc="ModelInfer", version="1",
    )  # fmt: skip
    assert samples[requests] == 8
    models = [name for name in samples if name.startswith("rnnserve_model_info{")]
    assert len(models) == 9  # one series per model, however many workers loaded it
    channel.close()


def test_a_sequence_continues_on_another_worker(workers) -> None:
    channel, stub = other_worker(workers.address, workers.stub)
    whole = y_of(workers.stub.ModelInfer(sine_request("sine-gru", X)))
    handed_over = 'rnnserve_sessions_handed_over_total{model="sine-gru",version="1"}'

    first = workers.stub.ModelInfer(
        sine_request("sine-gru", X[:, :5], sequence_id=4242, sequence_start=True)
    )
    rest = stub.ModelInfer(sine_request("sine-gru", X[:, 5:], sequence_id=4242, sequence_end=True))

    np.testing.assert_allclose(
        np.concatenate([y_of(first), y_of(rest)], axis=1), whole, rtol=1e-6, atol=1e-6
    )
    # The first worker kept the state until the other asked for it.
    assert scrape(workers.metrics_url)[handed_over] == 1
    channel.close()


def test_sigterm_stops_every_worker_and_exits_0(start_server, tiny_repository, redis_url) -> None:
    server = start_server(tiny_repository, args=workers_args(redis_url))
    pids = worker_pids(server.process.pid)

    assert len(pids) == 2
    assert server.stop() == 0
    assert not any(alive(pid) for pid in pids)


def test_several_workers_with_the_memory_store_are_refused(tiny_repository: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RNNSERVE_STATE_STORE"}
    command = [
        sys.executable, "-m", "rnnserve", "serve", "--model-repository", str(tiny_repository),
        "--workers", "2",
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    assert result.returncode == 2
    assert "--state-store owned" in result.stderr
    assert "RNNSERVE_STATE_STORE=owned" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_scrape_reads_again_a_worker_file_caught_half_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker started again creates its metrics file as it first records: a scrape that
    opens it before its header is in reads it again, rather than answer 500."""
    path = tmp_path / "counter_4242.db"
    path.touch()  # created, not yet written: prometheus_client cannot read it

    def made(seconds: float) -> None:  # the worker writes its file while the scrape waits
        path.unlink()
        written = MmapedDict(str(path))
        written.write_value(mmap_key("steps", "steps_total", [], [], "steps"), 7.0, 0.0)
        written.close()

    monkeypatch.setattr("rnnserve.service.workers.time", types.SimpleNamespace(sleep=made))
    (metric,) = WorkerFiles(str(tmp_path)).collect()

    assert [sample.value for sample in metric.samples if sample.name == "steps_total"] == [7.0]
