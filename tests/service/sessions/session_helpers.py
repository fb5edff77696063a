"""Helpers for the sessions tests over the wire: sequences sent piece by piece through
ModelInfer and ModelStreamInfer with grpc.aio, many at once."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from rnnserve.client.client import InferResult, build_request, decode_response
from rnnserve.client.errors import InferenceError
from rnnserve.protocol import messages as pb
from rnnserve.protocol import rpc
from rnnserve.protocol.codec import Parameter

# For tests whose own servers share `any_redis`: the cluster's turn is left to the full
# suite (slow). The fast tier checks the stores on the cluster in process
# (test_state_stores.py, test_owned_store.py, test_step_accounting.py).
CLUSTER_TURN_SLOW = pytest.mark.parametrize(
    "any_redis", ["server", pytest.param("cluster", marks=pytest.mark.slow)], indirect=True
)


def random_chunks(rng: np.random.Generator, total: int, low: int, high: int) -> list[int]:
    """Piece sizes from low to high (the last may be shorter) adding up to total."""
    chunks: list[int] = []
    while sum(chunks) < total:
        chunks.append(min(int(rng.integers(low, high + 1)), total - sum(chunks)))
    return chunks


def step_request(
    model: str, x: np.ndarray, sequence_id: int | str, index: int, count: int
) -> pb.ModelInferRequest:
    """Piece `index` of `count` of a sine sequence: x is [length]."""
    parameters: dict[str, Parameter] = {
        "sequence_id": sequence_id,
        "sequence_start": index == 0,
        "sequence_end": index == count - 1,
    }
    return build_request(model, {"x": x[None, :, None]}, ["y"], parameters)


def y_of(response: InferResult) -> np.ndarray:
    return response.outputs["y"].reshape(-1)


class AioSessions:
    """Sine sequences sent piece by piece over one grpc.aio channel."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.stub = rpc.Stub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def unary(
        self, model: str, x: np.ndarray, chunks: list[int], sequence_id: int | str
    ) -> np.ndarray:
        """The sequence's y, each piece its own ModelInfer call."""
        pieces = []
        for index, (start, end) in enumerate(bounds(chunks)):
            request = step_request(model, x[start:end], sequence_id, index, len(chunks))
            reply = await self.stub.ModelInfer(request)
            pieces.append(y_of(decode_response(reply)))
        return np.concatenate(pieces)

    async def streamed(
        self, model: str, x: np.ndarray, chunks: list[int], sequence_id: int | str
    ) -> np.ndarray:
        """The sequence's y, every piece on one ModelStreamInfer stream."""
        call = self.stub.ModelStreamInfer()
        pieces = []
        for index, (start, end) in enumerate(bounds(chunks)):
            await call.write(step_request(model, x[start:end], sequence_id, index, len(chunks)))
            reply = await call.read()
            if reply.error_message:
                raise InferenceError("STREAM_ERROR", reply.error_message)
            pieces.append(y_of(decode_response(reply.infer_response)))
        await call.done_writing()
        return np.concatenate(pieces)


def bounds(chunks: list[int]) -> list[tuple[int, int]]:
    ends = np.cumsum(chunks).tolist()
    return list(zip([0, *ends[:-1]], ends, strict=True))
