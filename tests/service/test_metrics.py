"""Metrics that answer questions, scraped from real servers: a failed request carries the
version that would have run, latency histograms hold inference only (by rpc and code),
requests in flight, the session limit, whether the state store answers, no `_created`."""

from __future__ import annotations

import socket
import time
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from processes import free_port
from prometheus_client import CollectorRegistry
from scrape import scrape, series

from rnnserve.client.client import RnnClient, build_request
from rnnserve.client.errors import InferenceError
from rnnserve.client.rest import RestClient
from rnnserve.protocol import messages as pb
from rnnserve.service.device import gpu_visible
from rnnserve.service.metrics import GpuMetrics, GpuReading

X = np.zeros((1, 2, 1), np.float32)
EMPTY = np.zeros((0, 2, 1), np.float32)
STORE_DOWN_TIMEOUT_S = 60.0
STORE_UP = "rnnserve_state_store_up{}"
STORE_ERRORS = 'rnnserve_state_store_errors_total{operation="start",store="redis"}'


def requests(**labels: str) -> str:
    return series("rnnserve_requests_total", **labels)


def latency_count(**labels: str) -> str:
    return series("rnnserve_request_duration_seconds_count", **labels)


def test_failed_requests_carry_the_version_that_would_have_run(server) -> None:
    with RnnClient(server.address) as grpc_client, RestClient(server.http_url) as rest_client:
        for client in (grpc_client, rest_client):
            with pytest.raises(InferenceError):
                client.infer_response("sine-lstm", {"x": EMPTY})

    samples = scrape(server.metrics_url)

    for protocol in ("grpc", "http"):
        failed = {"model": "sine-lstm", "version": "1", "rpc": "ModelInfer", "protocol": protocol}
        assert samples[requests(code="INVALID_ARGUMENT", **failed)] >= 1
        assert samples[latency_count(code="INVALID_ARGUMENT", **failed)] >= 1


def test_names_the_repository_does_not_know_are_not_labels(server) -> None:
    server.stub.ModelReady(pb.ModelReadyRequest(name="made-up-name-1"))
    with pytest.raises(grpc.RpcError):
        server.stub.ModelInfer(build_request("made-up-name-2", {"x": X}))
    with RestClient(server.http_url) as client, pytest.raises(InferenceError):
        client.infer_response("made-up-name-3", {"x": X})

    samples = scrape(server.metrics_url)

    assert not [name for name in samples if "made-up-name" in name]
    unknown = {"model": "", "version": "", "rpc": "ModelInfer", "code": "NOT_FOUND"}
    assert samples[requests(protocol="grpc", **unknown)] >= 1
    assert samples[requests(protocol="http", **unknown)] >= 1


def test_latency_is_for_inference_only_by_rpc_and_code(server) -> None:
    with RnnClient(server.address) as client:
        client.model_metadata("sine-gru")
        client.infer("sine-gru", {"x": X})
        list(client.stream(iter([build_request("sine-gru", {"x": X})])))

    samples = scrape(server.metrics_url)

    ok = {"model": "sine-gru", "version": "1", "code": "OK", "protocol": "grpc"}
    assert samples[latency_count(rpc="ModelInfer", **ok)] >= 1
    assert samples[latency_count(rpc="ModelStreamInfer", **ok)] >= 1
    assert samples[requests(rpc="ModelMetadata", **ok)] >= 1
    timed = {name for name in samples if name.startswith("rnnserve_request_duration_seconds")}
    assert not [name for name in timed if 'rpc="Model' in name and "Infer" not in name]


def test_requests_in_flight(server) -> None:
    """A REST request whose body has not all arrived is in flight: deterministic."""
    in_flight = series("rnnserve_requests_in_flight", model="sine-rnn", version="1")
    body = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1, 1], "data": [0.5]}]}'
    head = (
        f"POST /v2/models/sine-rnn/infer HTTP/1.1\r\nHost: test\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()

    with socket.create_connection(("127.0.0.1", server.http_port), timeout=30) as sock:
        sock.sendall(head + body[:10])
        deadline = time.monotonic() + 30
        while scrape(server.metrics_url).get(in_flight, 0) != 1:
            assert time.monotonic() < deadline, "the request was never in flight"
            time.sleep(0.02)
        sock.sendall(body[10:])
        answer = sock.makefile("rb").read()

    assert answer.startswith(b"HTTP/1.1 200")
    assert scrape(server.metrics_url)[in_flight] == 0


def test_no_created_series_and_the_gauges_operators_alert_on(server) -> None:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as page:
        text = page.read().decode()
    samples = scrape(server.metrics_url)

    assert "_created" not in text
    assert samples["rnnserve_sessions_limit{}"] == 100_000  # max_sessions
    assert samples["rnnserve_state_store_up{}"] == 1
    assert abs(samples["rnnserve_start_time_seconds{}"] - time.time()) < 24 * 3600


def test_no_gpu_series_without_a_gpu(server) -> None:
    if gpu_visible():
        pytest.skip("a GPU is here")
    with urllib.request.urlopen(server.metrics_url, timeout=10) as page:
        assert "rnnserve_gpu_" not in page.read().decode()


def test_gpu_series_are_each_gpus_reading_at_the_scrape() -> None:
    readings = [GpuReading("0", 0.25, 2**30, 80 * 2**30), GpuReading("1", 1.0, 0, 80 * 2**30)]
    registry = CollectorRegistry()
    registry.register(GpuMetrics(lambda: readings))
    value = registry.get_sample_value
    assert value("rnnserve_gpu_utilization_ratio", {"device": "0"}) == 0.25
    assert value("rnnserve_gpu_memory_used_bytes", {"device": "0"}) == 2**30
    assert value("rnnserve_gpu_memory_total_bytes", {"device": "1"}) == 80 * 2**30


def test_an_unreachable_state_store_is_down(start_server, tiny_repository, free_redis_url) -> None:
    server = start_server(
        tiny_repository,
        args=["--state-store", "redis", "--redis-url", free_redis_url,
              "--session-idle-timeout-s", "1"],
        wait_ready=False,
    )  # fmt: skip
    health = health_pb2_grpc.HealthStub(server.channel)

    deadline = time.monotonic() + STORE_DOWN_TIMEOUT_S
    while "not ready" not in server.log() or scrape_when_up(server).get(STORE_UP) != 0:
        assert time.monotonic() < deadline, "the store never went down"
        time.sleep(0.1)
    with RnnClient(server.address) as client:
        answered = client.infer("sine-lstm", {"x": X}, ["y"])  # no state needed: served
        with pytest.raises(InferenceError) as refused:
            client.infer("sine-lstm", {"x": X}, ["y"], {"sequence_id": 1, "sequence_start": True})
    checked = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)

    assert answered["y"].shape == (1, 2, 1)
    assert refused.value.code == "UNAVAILABLE"
    assert f"the redis state store at {free_redis_url[8:]} is unreachable" in refused.value.message
    assert "the request may be retried" in refused.value.message
    assert checked.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert scrape(server.metrics_url)[STORE_ERRORS] >= 1
    assert "the redis state store at" in server.log().split("not ready: ")[1].splitlines()[0]


def scrape_when_up(server) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """The metrics once /metrics listens (it does before the models load); {} before."""
    try:
        return scrape(server.metrics_url)
    except OSError:
        return {}


@pytest.fixture
def free_redis_url() -> str:
    """The URL of a port nothing listens on."""
    return f"redis://127.0.0.1:{free_port()}/0"


def test_an_observer_counts_as_the_histograms_own_observe() -> None:
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from rnnserve.service.metrics import LATENCY_BUCKETS, Observer

    amounts = [0.0, 2.5e-5, 3e-5, 1e-3, 0.0011, 10.0, 11.0, *LATENCY_BUCKETS]
    pages = []
    for observe in (lambda child: child.observe, lambda child: Observer(child).observe):
        registry = CollectorRegistry()
        histogram = Histogram("h", "h", ["model"], buckets=LATENCY_BUCKETS, registry=registry)
        record = observe(histogram.labels("m"))
        for amount in amounts:
            record(amount)
        pages.append(generate_latest(registry))

    assert pages[0] == pages[1]
    assert b'h_bucket{le="2.5e-05",model="m"} 3.0' in pages[0]  # `le`: bounds are inclusive


def test_tallies_read_as_the_metrics_own_updates_once_flushed() -> None:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    from rnnserve.service.metrics import LATENCY_BUCKETS, Tallies

    amounts = [0.0, 2.5e-5, 3e-5, 1e-3, 0.0011, 10.0, 11.0, *LATENCY_BUCKETS]
    pages = []
    for tallied in (False, True):
        registry = CollectorRegistry()
        histogram = Histogram("h", "h", ["model"], buckets=LATENCY_BUCKETS, registry=registry)
        counter = Counter("c", "c", ["model"], registry=registry)
        gauge = Gauge("g", "g", ["model"], registry=registry)
        tallies = Tallies()
        spread = tallies.histogram(histogram.labels("m"))
        count, level = tallies.counter(counter.labels("m")), tallies.counter(gauge.labels("m"))
        for amount in amounts:
            if tallied:
                spread.observe(amount)
                count.value += 1
                level.value += 1
            else:
                histogram.labels("m").observe(amount)
                counter.labels("m").inc()
                gauge.labels("m").inc()
        if tallied:
            level.value -= 2
            tallies.flush()
            tallies.flush()  # what was written is not written again
        else:
            gauge.labels("m").dec(2)
        pages.append(generate_latest(registry))

    assert pages[0] == pages[1]
    assert b'c_total{model="m"} 25.0' in pages[0]
