"""How a sequence finds its state behind a load balancer that does not know about sequences
(docs/scaling.md): two server processes on 127.0.0.1 share one Redis, and a sequence whose
steps alternate between them (a round-robin balancer at its worst) continues exactly, each
step at the offset the client counted: the redis store reads every step's state from Redis,
the owned store hands the state over from the server that stepped it last. And the client
library names the sequence in a header of every call (`sequence-id`), so that a balancer
that hashes on it keeps a sequence on one replica and hand-overs stay rare."""

from __future__ import annotations

import asyncio
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from scrape import scrape, series

from rnnserve.client.aio.client import AsyncRnnClient
from rnnserve.client.aio.sequence import AsyncSequenceSession
from rnnserve.client.client import RnnClient
from rnnserve.client.errors import InferenceError
from rnnserve.client.sequence import ROUTING_HEADER, SequenceSession

MODEL = "sine-lstm"
CHUNKS = [(0, 4), (4, 7), (7, 12), (12, 14), (14, 20), (20, 24)]


@pytest.mark.parametrize("store", ["redis", "owned"])
def test_a_sequence_alternating_between_two_servers_continues_exactly(
    start_server, sine_repository: Path, redis_url: str, store: str
) -> None:
    env = {"RNNSERVE_STATE_STORE": store, "RNNSERVE_REDIS_URL": redis_url}
    servers = [start_server(sine_repository, env=env) for _ in range(2)]
    clients = [RnnClient(server.address) for server in servers]
    x = np.sin(np.linspace(0, 5, CHUNKS[-1][1])).astype(np.float32)
    whole = clients[0].infer(MODEL, {"x": x[None, :, None]}, ["y"])["y"]
    session = SequenceSession(clients[0], MODEL, f"routing-{store}")
    pieces = []
    for number, (begin, end) in enumerate(CHUNKS):
        session.client = clients[number % 2]
        last = number == len(CHUNKS) - 1
        pieces.append(session.step({"x": x[None, begin:end, None]}, ["y"], end=last)["y"])
        assert session.offset == end  # the server counted exactly the steps sent
    for client in clients:
        client.close()

    np.testing.assert_allclose(np.concatenate(pieces, axis=1), whole, rtol=0, atol=1e-5)
    assert session.retries == 0
    if store == "owned":  # every step but the last found the state on the other server
        handed = series("rnnserve_sessions_handed_over_total", model=MODEL, version="1")
        moves = sum(scrape(server.metrics_url).get(handed, 0) for server in servers)
        assert moves == len(CHUNKS) - 1


class _HeaderRecorder(grpc.GenericRpcHandler):
    """A real gRPC server's handler that records each call's method and headers, and
    implements nothing (the call fails UNIMPLEMENTED, which the client does not retry)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []

    def service(self, details: grpc.HandlerCallDetails) -> None:
        self.calls.append((details.method, dict(details.invocation_metadata)))


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("kind", ["sync", "asyncio"])
def test_every_call_of_a_sequence_names_it_in_a_header(streaming: bool, kind: str) -> None:
    """Both clients' sequences send the header, beside the client's own (its token)."""
    recorder = _HeaderRecorder()
    server = grpc.server(futures.ThreadPoolExecutor(2), handlers=[recorder])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    step = {"x": np.zeros((1, 2, 1), np.float32)}
    try:
        if kind == "sync":
            with RnnClient(f"127.0.0.1:{port}", token="t0ken") as client:
                session = SequenceSession(client, MODEL, "user-7:chat-3", streaming=streaming)
                with pytest.raises(InferenceError, match="UNIMPLEMENTED"):
                    session.step(step, ["y"])
                session.close()
        else:

            async def steps() -> None:
                async with AsyncRnnClient(f"127.0.0.1:{port}", token="t0ken") as client:
                    session = AsyncSequenceSession(
                        client, MODEL, "user-7:chat-3", streaming=streaming
                    )
                    # UNIMPLEMENTED, or on a stream at times INTERNAL ("Internal error
                    # from Core"): grpc.aio's write racing the server's refusal.
                    with pytest.raises(InferenceError):
                        await session.step(step, ["y"])
                    await session.close()

            asyncio.run(steps())
    finally:
        server.stop(grace=None)

    [(method, headers)] = recorder.calls
    assert method.endswith("ModelStreamInfer" if streaming else "ModelInfer")
    assert headers[ROUTING_HEADER] == "user-7:chat-3"
    assert headers["authorization"] == "Bearer t0ken"
