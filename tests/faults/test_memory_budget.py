"""A request inside every other limit (batch and length are capped apart) that implies
gigabytes of work is refused RESOURCE_EXHAUSTED before any work, naming the limit and its
size; the largest request the budget accepts is answered, and resident memory returns to
within 1.5x of its level before it (ONNX Runtime's arena does not keep its peak); refused
requests leave nothing behind. Their messages are in the budget from the moment they
arrive: a flood of them, over either protocol, stays within the container the defaults
are sized for."""

from __future__ import annotations

import http.client
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from polling import eventually
from processes import peak_rss_bytes, rss_bytes
from scrape import scrape

from rnnserve.client.client import RnnClient, build_request
from rnnserve.client.errors import InferenceError
from rnnserve.protocol import rest, rpc

ROWS = 1024
PROBE_STEPS = 2_000  # past the budget, in a small message: its figures
HUGE_STEPS = 15_000  # 59 MiB of input, the issue's: 10 GB of ORT work before the budget
REFUSALS = 8
FLOOD = 32  # HUGE_STEPS requests at once
CONTAINER_BYTES = 2 * 10**9  # what the defaults are sized for (README, "Faults")
IMPLIES = re.compile(r"implies ([\d,]+) elements .*?: ([\d,]+) rows x ([\d,]+) time steps")
LIMIT = re.compile(r"at most ([\d,]+) elements are accepted \(max_request_elements\)")


def number(text: str) -> int:
    return int(text.replace(",", ""))


def test_a_request_past_the_budget_is_refused_and_the_largest_accepted_leaves_no_peak(
    start_server, sine_repository: Path
) -> None:
    server = start_server(sine_repository)
    pid = server.process.pid
    with RnnClient(server.address, timeout_s=120) as client:
        client.infer("sine-lstm", {"x": np.zeros((ROWS, 2, 1), np.float32)}, ["y"])
        before = rss_bytes(pid)
        # The largest accepted request, from the budget's own figures in a refusal.
        with pytest.raises(InferenceError) as probe:
            client.infer("sine-lstm", {"x": np.zeros((ROWS, PROBE_STEPS, 1), np.float32)})
        elements, rows, steps = map(number, IMPLIES.search(probe.value.message).groups())
        [limit] = map(number, LIMIT.search(probe.value.message).groups())
        largest = int(limit / (elements / (rows * steps) * ROWS))
        x = np.random.default_rng(0).standard_normal((ROWS, largest, 1)).astype(np.float32)
        y = client.infer("sine-lstm", {"x": x}, ["y"])["y"]
        eventually(lambda: rss_bytes(pid) <= 1.5 * before, "resident memory came back")
        after = rss_bytes(pid)
        with pytest.raises(InferenceError) as one_more:  # one step more per row: refused
            client.infer("sine-lstm", {"x": np.zeros((ROWS, largest + 1, 1), np.float32)})
        with pytest.raises(InferenceError) as huge:
            client.infer("sine-lstm", {"x": np.zeros((ROWS, HUGE_STEPS, 1), np.float32)})
    mib = 2**20
    print(
        f"\nrefused: {huge.value.message}\nlargest accepted: x [{ROWS}, {largest}, 1]; RSS "
        f"before {before / mib:.0f} MiB, after it {after / mib:.0f} MiB ({after / before:.2f}x), "
        f"after the refusal {rss_bytes(pid) / mib:.0f} MiB"
    )

    for refused in (probe, one_more, huge):
        assert refused.value.code == "RESOURCE_EXHAUSTED"
        assert "model 'sine-lstm'" in refused.value.message
        assert refused.value.message.endswith("send fewer rows or shorter pieces of the sequence")
    elements, rows, steps = map(number, IMPLIES.search(huge.value.message).groups())
    assert (rows, steps) == (ROWS, HUGE_STEPS) and elements > 100_000_000
    assert y.shape == (ROWS, largest, 1) and np.isfinite(y).all()
    samples = scrape(server.metrics_url)
    assert samples["rnnserve_request_bytes_in_flight{}"] == 0
    assert "Traceback" not in server.log()


def test_refused_requests_leave_nothing_behind(start_server, sine_repository: Path) -> None:
    server = start_server(sine_repository)
    pid = server.process.pid
    x = np.zeros((ROWS, HUGE_STEPS, 1), np.float32)
    with RnnClient(server.address, timeout_s=120) as client:
        client.infer("sine-lstm", {"x": np.zeros((1, 2, 1), np.float32)}, ["y"])
        before = rss_bytes(pid)
        for _ in range(REFUSALS):
            with pytest.raises(InferenceError) as refused:
                client.infer("sine-lstm", {"x": x})
            assert refused.value.code == "RESOURCE_EXHAUSTED"
        grown = rss_bytes(pid) - before
    # The allocator keeps some of the buffers the messages arrived in; a process that kept
    # each refused request would have grown by REFUSALS times its size.
    assert grown < REFUSALS / 2 * x.nbytes, f"{grown / 2**20:.0f} MiB more after the refusals"


def flood_grpc(server, x: np.ndarray) -> list[str]:  # type: ignore[no-untyped-def]
    """FLOOD ModelInfer calls of `x` at once, each on a connection of its own; their codes."""
    raw = build_request("sine-lstm", {"x": x}).SerializeToString()

    def call(_: int) -> str:
        options = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(server.address, options=options) as channel:
            try:
                channel.unary_unary(f"/{rpc.SERVICE_NAME}/ModelInfer")(raw, timeout=300)
            except grpc.RpcError as error:
                return error.code().name
        return "OK"

    with ThreadPoolExecutor(FLOOD) as pool:
        return list(pool.map(call, range(FLOOD)))


def flood_rest(server, x: np.ndarray) -> list[str]:  # type: ignore[no-untyped-def]
    """FLOOD infer requests of `x` (binary data) at once; their codes."""
    header = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                     "parameters": {rest.BINARY_DATA_SIZE: x.nbytes}}]}
    ).encode()  # fmt: skip
    body = header + x.tobytes()

    def post(_: int) -> str:
        connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=300)
        try:
            connection.request(
                "POST", "/v2/models/sine-lstm/infer", body,
                {rest.HEADER_LENGTH: str(len(header))},
            )  # fmt: skip
            answer = connection.getresponse()
            return str(json.loads(answer.read()).get("code", answer.status))
        finally:
            connection.close()

    with ThreadPoolExecutor(FLOOD) as pool:
        return list(pool.map(post, range(FLOOD)))


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_a_flood_of_huge_requests_stays_within_the_container_and_leaves_no_peak(
    start_server, sine_repository: Path, protocol: str
) -> None:
    server = start_server(sine_repository)  # the documented defaults
    pid = server.process.pid
    x = np.zeros((ROWS, HUGE_STEPS, 1), np.float32)  # 58.6 MiB
    with RnnClient(server.address) as client:
        client.infer("sine-lstm", {"x": np.zeros((1, 2, 1), np.float32)}, ["y"])
    before = rss_bytes(pid)

    codes = (flood_grpc if protocol == "grpc" else flood_rest)(server, x)
    peak = peak_rss_bytes(pid)
    eventually(lambda: rss_bytes(pid) <= 1.5 * before, "resident memory came back", 30)
    after = rss_bytes(pid)
    mib = 2**20
    print(
        f"\n{protocol}: {FLOOD} requests of {x.nbytes / mib:.1f} MiB at once: RSS before "
        f"{before / mib:.0f} MiB, peak {peak / mib:.0f} MiB, after {after / mib:.0f} MiB "
        f"({after / before:.2f}x)"
    )

    assert codes == ["RESOURCE_EXHAUSTED"] * FLOOD
    assert peak < CONTAINER_BYTES
    assert after <= 1.5 * before
    samples = scrape(server.metrics_url)
    assert samples["rnnserve_request_bytes_in_flight{}"] == 0
    assert samples["rnnserve_request_message_bytes{}"] == 0
    assert "Traceback" not in server.log()
