"""REST never answers 500 for a body, whatever it holds, and a body costs what it weighs:
malformed ones get 400 naming the problem, reading one is linear in its size (20,000
inputs within twice the CPU of the same request over gRPC), a body that stalls is dropped
after request_body_timeout_s (408, the connection closed), a client that goes away costs
no log line of its own, and a generated corpus of hostile bodies leaves the server alive,
answering, with its memory where it was."""

from __future__ import annotations

import http.client
import json
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from hostile_bodies import corpus
from polling import eventually
from processes import cpu_seconds, rss_bytes
from scrape import scrape, series

from rnnserve.client.client import RnnClient, build_request
from rnnserve.protocol import rest, rpc

TIMEOUT_S = 2  # the server's request_body_timeout_s
STALLED = 1_000
CORPUS = 600


@pytest.fixture(scope="module")
def rest_server(start_module_server, tiny_repository: Path):  # type: ignore[no-untyped-def]
    return start_module_server(tiny_repository, args=["--request-body-timeout-s", str(TIMEOUT_S)])


def post(
    port: int, model: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str]]:
    """One infer request on a connection of its own: the status and the JSON answer."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("POST", f"/v2/models/{model}/infer", body, headers or {})
        answer = connection.getresponse()
        content = answer.read()
        media = answer.getheader("content-type", "")
        return answer.status, json.loads(content) if "json" in media else {}
    finally:
        connection.close()


def tensor(name: str, datatype: str, shape: list[int], data: object) -> dict[str, object]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def infer_body(*tensors: dict[str, object]) -> bytes:
    return json.dumps({"inputs": list(tensors)}).encode()


def binary_body(size: int, data: bytes) -> tuple[bytes, dict[str, str]]:
    """sine's x [1, 1, 1] in the binary part, `binary_data_size` saying `size`."""
    header = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1, 1],
                     "parameters": {rest.BINARY_DATA_SIZE: size}}]}
    ).encode()  # fmt: skip
    return header + data, {rest.HEADER_LENGTH: str(len(header))}


FLOAT = struct.pack("<f", 0.5)
LYING_BINARY = [binary_body(8, FLOAT), binary_body(2, FLOAT), binary_body(4, FLOAT * 2)]


@pytest.mark.parametrize(
    ("model", "body", "headers", "words"),
    [
        ("tagger-gru", b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], '
                       b'"data": ["\xffhello"]}]}', {}, "not UTF-8 text"),
        ("tagger-gru", infer_body(tensor("text", "BYTES", [1], ["\ud800"])), {},
         "lone surrogate"),
        ("sine-lstm", b"[" * 100_000 + b"]" * 100_000, {}, "nests deeper than 64 levels"),
        ("sine-lstm", infer_body(tensor("x", "FP32", [1, 1, 1], [1e39])), {},
         "input 'x': a value does not fit FP32"),
        ("tagger-gru", infer_body(tensor("tokens", "INT64", [1, 1], [2**63])), {},
         "input 'tokens': a value does not fit INT64"),
        ("sine-lstm", infer_body(tensor("x", "FP32", [2**62, 4, 0], [])), {},
         "more elements than any tensor may hold"),
        ("sine-lstm", infer_body(), {rest.HEADER_LENGTH: "99"},
         f"{rest.HEADER_LENGTH} says 99 bytes of JSON; the body has 14"),
        ("sine-lstm", infer_body(), {rest.HEADER_LENGTH: "-1"}, "must be a byte count"),
        ("sine-lstm", *LYING_BINARY[0], "binary_data_size is 8, but only 4 bytes"),
        ("sine-lstm", *LYING_BINARY[1], "binary data holds 2 bytes; shape [1, 1, 1] of FP32"),
        ("sine-lstm", *LYING_BINARY[2], "4 bytes of binary data follow the JSON"),
    ],
    ids=[
        "invalid-utf8", "lone-surrogate", "nested-100000-deep", "fp32-out-of-range",
        "int64-out-of-range", "shape-past-any-array", "header-length-past-the-body",
        "header-length-negative", "binary-size-past-the-body", "binary-size-short",
        "binary-size-leaving-bytes",
    ],
)  # fmt: skip
def test_a_malformed_body_gets_400_naming_the_problem(
    rest_server, model: str, body: bytes, headers: dict[str, str], words: str
) -> None:
    status, answer = post(rest_server.http_port, model, body, headers)

    assert (status, answer["code"]) == (400, "INVALID_ARGUMENT")
    assert words in answer["error"]


def test_twenty_thousand_inputs_cost_at_most_twice_the_cpu_they_cost_over_grpc(
    rest_server,
) -> None:
    names = [f"x{i}" for i in range(20_000)]  # each refused at the end: not sine's input
    x = np.full((1, 1, 1), 0.5, np.float32)
    message = build_request("sine-lstm", dict.fromkeys(names, x)).SerializeToString()
    body = infer_body(*(tensor(name, "FP32", [1, 1, 1], [0.5]) for name in names))
    pid = rest_server.process.pid
    spent = {"grpc": 0.0, "rest": 0.0}
    with grpc.insecure_channel(rest_server.address) as channel:
        model_infer = channel.unary_unary(f"/{rpc.SERVICE_NAME}/ModelInfer")
        for _ in range(3):
            start = cpu_seconds(pid)
            with pytest.raises(grpc.RpcError) as refused:
                model_infer(message, timeout=60)
            middle = cpu_seconds(pid)
            status, answer = post(rest_server.http_port, "sine-lstm", body)
            spent["grpc"] += middle - start
            spent["rest"] += cpu_seconds(pid) - middle
            assert refused.value.details() == answer["error"]  # the same answer
            assert status == 400 and "unexpected input 'x0'" in answer["error"]
    print(f"\nserver CPU for 3 x 20,000 inputs: {spent} ({len(body):,} bytes of JSON)")

    assert spent["rest"] <= 2 * spent["grpc"]


def stalled(port: int, count: int) -> Iterator[socket.socket]:
    """Connections that each sent the headers of a 100-byte body and 10 bytes of it."""
    head = (
        b"POST /v2/models/sine-lstm/infer HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n" + b'{"inputs":'
    )
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        sock.sendall(head)
        yield sock


def answer_of(sock: socket.socket) -> bytes:
    """Everything the server sent before it closed the connection."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_stalled_bodies_are_dropped_after_the_timeout_while_others_are_served(
    rest_server, tiny_repository: Path
) -> None:
    before = rss_bytes(rest_server.process.pid)
    sockets = list(stalled(rest_server.http_port, STALLED))
    try:
        # Meanwhile the server answers, over both protocols.
        ok, _ = post(
            rest_server.http_port, "sine-lstm", infer_body(tensor("x", "FP32", [1, 1, 1], [0.5]))
        )
        with RnnClient(rest_server.address) as client:
            assert client.infer("sine-lstm", {"x": np.zeros((1, 2, 1), np.float32)})
        answers = [answer_of(sock) for sock in sockets]  # each ends: the server closed it
    finally:
        for sock in sockets:
            sock.close()
    grown = rss_bytes(rest_server.process.pid) - before

    assert ok == 200
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert b'"code":"DEADLINE_EXCEEDED"' in answer
        assert f"did not arrive within {TIMEOUT_S} s (request_body_timeout_s)".encode() in answer
    assert grown < 64 * 2**20, f"{grown / 2**20:.0f} MiB more for {STALLED} stalled bodies"
    assert "Traceback" not in rest_server.log()


def test_a_client_that_goes_away_mid_body_costs_no_log_line(rest_server) -> None:
    cancelled = series(
        "rnnserve_requests_total", code="CANCELLED", model="sine-lstm", protocol="http",
        rpc="ModelInfer", version="1",
    )  # fmt: skip
    counted = scrape(rest_server.metrics_url).get(cancelled, 0)
    lines = len(rest_server.log().splitlines())

    for sock in stalled(rest_server.http_port, 20):
        sock.close()

    eventually(
        lambda: scrape(rest_server.metrics_url).get(cancelled, 0) == counted + 20,
        "the 20 requests recorded CANCELLED",
    )
    assert rest_server.log().splitlines()[lines:] == []  # no access log here: no line


def test_a_corpus_of_hostile_bodies_never_gets_500_nor_hurts_the_server(rest_server) -> None:
    pid, port = rest_server.process.pid, rest_server.http_port
    good = infer_body(tensor("x", "FP32", [1, 1, 1], [0.5]))
    post(port, "sine-lstm", good)
    before = rss_bytes(pid)
    bodies = corpus(CORPUS)
    answers = [(body, *post(port, body.model, body.content, body.headers)) for body in bodies]
    after = rss_bytes(pid)
    statuses = sorted({status for _, status, _ in answers})
    print(f"\n{len(bodies)} hostile bodies: statuses {statuses}; RSS before "
          f"{before / 2**20:.0f} MiB, after {after / 2**20:.0f} MiB")  # fmt: skip

    failed = [
        f"{status} {answer} for {body.model} ({body.how}): {body.content[:200]!r}"
        for body, status, answer in answers
        if status >= 500 or (status != 200 and answer.get("code") in (None, "INTERNAL"))
    ]
    assert not failed, "\n".join(failed[:10])
    assert sum(status == 400 for _, status, _ in answers) > CORPUS / 2
    assert rest_server.process.poll() is None
    assert post(port, "sine-lstm", good)[0] == 200
    assert after < 1.5 * before
    assert "Traceback" not in rest_server.log()
