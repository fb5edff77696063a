"""The server process: health while stopping, SIGTERM exits 0."""

from __future__ import annotations

import queue

import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_helpers import infer_request

from rnnserve.protocol import messages as pb


def test_sigterm_with_an_idle_stream_open_still_exits_0(start_server, tiny_repository) -> None:
    server = start_server(tiny_repository, args=["--grace-period-s", "1"])
    waiting: queue.Queue[pb.ModelInferRequest | None] = queue.Queue()
    stream = server.stub.ModelStreamInfer(iter(waiting.get, None))
    waiting.put(infer_request("sine-rnn", {"x": np.zeros((1, 2, 1), np.float32)}))
    assert next(stream).error_message == ""

    assert server.stop() == 0
    waiting.put(None)


def test_a_private_server_applies_its_settings(start_server, tiny_repository) -> None:
    server = start_server(tiny_repository, env={"RNNSERVE_MAX_SEQUENCE_LENGTH": "4"})
    health = health_pb2_grpc.HealthStub(server.channel)

    reply = health.Check(health_pb2.HealthCheckRequest(service="sine-gru"), timeout=10)
    too_long = infer_request("sine-gru", {"x": np.zeros((1, 5, 1), np.float32)})
    replies = list(server.stub.ModelStreamInfer(iter([too_long]), timeout=60))

    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert "expected at most 4" in replies[0].error_message
