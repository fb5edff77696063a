"""The REST front end lives the server's life: a request in flight at SIGTERM is answered
before the process exits 0, an idle keep-alive connection does not hold the exit up,
port 0 turns REST off, and bodies are bounded by max_message_bytes."""

from __future__ import annotations

import gzip
import http.client
import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from rest_helpers import curl
from scrape import scrape, series

from rnnserve.client.client import RnnClient
from rnnserve.client.rest import RestClient

IN_FLIGHT_TIMEOUT_S = 60.0


def test_a_request_in_flight_at_sigterm_is_answered(start_server, tiny_repository) -> None:
    # About a second of ONNX Runtime work: long enough to be seen running, and more than the
    # default memory budget lets one request imply.
    budget = ["--max-request-elements", str(10**9), "--max-inflight-bytes", str(10**10)]
    server = start_server(tiny_repository, args=budget)
    x = np.zeros((128, 20_000, 1), np.float32)
    started = series("rnnserve_queue_duration_seconds_count", model="sine-gru", version="1")

    with ThreadPoolExecutor(1) as pool, RestClient(server.http_url, timeout_s=120) as client:
        sent = pool.submit(client.infer_response, "sine-gru", {"x": x}, ["y"])
        deadline = time.monotonic() + IN_FLIGHT_TIMEOUT_S
        while scrape(server.metrics_url).get(started, 0) < 1:  # admitted, working
            assert not sent.done() and time.monotonic() < deadline, "never seen running"
            time.sleep(0.02)
        server.process.send_signal(signal.SIGTERM)
        outputs = sent.result(timeout=IN_FLIGHT_TIMEOUT_S).outputs

    assert outputs["y"].shape == x.shape
    assert server.process.wait(timeout=IN_FLIGHT_TIMEOUT_S) == 0  # one SIGTERM, a clean exit


def test_an_idle_keep_alive_connection_does_not_hold_the_exit(
    start_server, tiny_repository
) -> None:
    server = start_server(tiny_repository, args=["--grace-period-s", "5"])
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    connection.request("GET", "/v2/health/ready")
    assert connection.getresponse().read() == b""

    assert server.stop() == 0
    connection.close()


def test_http_port_0_turns_rest_off(start_server, tiny_repository) -> None:
    server = start_server(tiny_repository, args=["--http-port", "0"])

    with RnnClient(server.address) as client:
        assert client.server_ready()
    assert "HTTP/REST" not in server.log()
    assert "gRPC" in server.log()


def test_bodies_past_max_message_bytes_are_refused_413(start_server, tiny_repository) -> None:
    server = start_server(tiny_repository, args=["--max-message-bytes", "2048"])
    url = f"{server.http_url}/v2/models/tagger-gru/infer"
    large = json.dumps({"inputs": [], "pad": "x" * 4000}).encode()
    bomb = gzip.compress(large)  # small on the wire, too large once inflated

    plain = curl(url, data=large)
    inflated = curl(url, "-H", "Content-Encoding: gzip", data=bomb)

    assert len(bomb) < 2048
    for answer in (plain, inflated):
        assert answer.status == 413
        assert answer.json()["code"] == "RESOURCE_EXHAUSTED"
        assert "at most 2048 are accepted (max_message_bytes)" in answer.json()["error"]
