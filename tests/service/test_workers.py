"""`rnnserve serve --workers N`: several server processes on one port.

Each new connection may land on any worker and stays with it. A client cannot see which
worker answers, but each worker keeps its own model statistics: two connections whose
readings of one model's inference count differ, with no traffic in between, are on two
different workers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from scrape import scrape, series

from rnnserve.client.client import RnnClient, build_request, decode_response
from rnnserve.client.rest import RestClient
from rnnserve.client.retry import RetryPolicy
from rnnserve.client.sequence import SequenceSession
from rnnserve.protocol import messages as pb
from rnnserve.protocol import rpc

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


def worker_pids(supervisor: int) -> list[int]:
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return [int(pid) for pid in children if b"spawn_main" in _cmdline(int(pid))]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""


def alive(pid: int) -> bool:
    # A worker of an exited supervisor is reparented, and reaped, elsewhere: look it up.
    return bool(_cmdline(pid))


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


def test_a_worker_that_dies_stops_the_others_and_the_server_fails(
    start_server, tiny_repository, redis_url
) -> None:
    server = start_server(tiny_repository, args=workers_args(redis_url), exit_code=1)
    dying, other = worker_pids(server.process.pid)

    os.kill(dying, signal.SIGKILL)
    code = server.process.wait(timeout=60)

    assert code == 1
    assert "exited unexpectedly" in server.log()
    deadline = time.monotonic() + 60
    while alive(other) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(other)


CRASH_SEQUENCES = 20
CRASH_CHUNKS = [(start, start + 3) for start in range(0, 60, 3)]  # 20 steps of 3


def test_sequences_retried_through_a_worker_crash_end_exactly_as_the_whole(
    start_server, sine_repository: Path, redis_url: str
) -> None:
    """Twenty sequences step through `--workers 2 --state-store redis`, half of them on
    streams; one worker is killed (SIGKILL) mid-run, so the server stops (exit 1), and a new
    one comes up on the same port. The client library sends the steps that failed again,
    with their offsets, until the new server answers: every sequence equals its whole
    sequence, no step applied twice or lost."""
    args = ["--workers", "2", "--state-store", "redis", "--redis-url", redis_url,
            "--grace-period-s", "2"]  # fmt: skip
    first = start_server(sine_repository, args=args, exit_code=1)
    rng = np.random.default_rng(12)
    xs = [rng.normal(0, 1, 60).astype(np.float32) for _ in range(CRASH_SEQUENCES)]
    with RnnClient(first.address) as client:
        wholes = [client.infer("sine-lstm", {"x": x[None, :, None]}, ["y"])["y"] for x in xs]
    retry = RetryPolicy(max_attempts=400, initial_backoff_s=0.02, max_backoff_s=0.25)
    answered, third = iter(range(1, 10**6)), threading.Event()  # counts steps answered
    retries: list[int] = []

    def sequence(index: int) -> np.ndarray:
        with (
            RnnClient(first.address, timeout_s=10) as client,
            SequenceSession(client, "sine-lstm", f"crash-{index}", index % 2 == 1,
                            retry=retry) as session,
        ):  # fmt: skip
            pieces = []
            for number, (begin, end) in enumerate(CRASH_CHUNKS):
                x = xs[index][None, begin:end, None]
                last = number == len(CRASH_CHUNKS) - 1
                pieces.append(session.step({"x": x}, ["y"], end=last)["y"])
                if next(answered) >= CRASH_SEQUENCES * len(CRASH_CHUNKS) // 3:
                    third.set()
            assert session.offset == 60
            retries.append(session.retries)
            return np.concatenate(pieces, axis=1)

    with ThreadPoolExecutor(CRASH_SEQUENCES) as pool:
        results = [pool.submit(sequence, index) for index in range(CRASH_SEQUENCES)]
        assert third.wait(timeout=120), "the sequences never got a third of the way"
        dying, _ = worker_pids(first.process.pid)
        os.kill(dying, signal.SIGKILL)
        assert first.process.wait(timeout=60) == 1
        start_server(sine_repository, args=args, grpc_port=first.grpc_port)
        for got, whole in zip(results, wholes, strict=True):
            np.testing.assert_allclose(got.result(timeout=180), whole, rtol=0, atol=1e-5)
    assert sum(retries) > 0, retries  # the crash was crossed, not missed


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
