"""The client library's retries, against a real server: a step whose answer is lost on its
way back (the server applied it; the client saw UNAVAILABLE, as when a connection breaks)
is sent again with the same offset and answered again, never applied twice; a step the
server counts differently is refused and raised, never answered wrongly."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from rnnserve.client.client import RnnClient
from rnnserve.client.errors import InferenceError, SequenceOutOfStep
from rnnserve.client.retry import RetryPolicy
from rnnserve.client.sequence import SequenceSession
from rnnserve.protocol import rpc

X = np.sin(np.linspace(0, 4, 24, dtype=np.float32))
CHUNKS = [(start, start + 3) for start in range(0, 24, 3)]  # 8 steps of 3
FAST = RetryPolicy(max_attempts=5, initial_backoff_s=0.001, max_backoff_s=0.01)


class LostAnswer(grpc.RpcError):
    """What a connection that breaks after the server answered looks like to the client."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "the connection broke before the answer arrived"

    def trailing_metadata(self) -> tuple:
        return ()


class _Replies:
    """A stream's replies, of which the chosen ones are lost after arriving."""

    def __init__(self, call: Any, lose: Iterator[bool]) -> None:
        self._call, self._lose = call, lose

    def __iter__(self) -> _Replies:
        return self

    def __next__(self) -> Any:
        reply = next(self._call)
        if next(self._lose):
            raise LostAnswer()
        return reply

    def cancel(self) -> None:
        self._call.cancel()


class LoseAnswers(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Loses every third answer, after the server sent it."""

    def __init__(self) -> None:
        self._lose = (n % 3 == 2 for n in itertools.count())
        self.lost = 0

    def _losing(self) -> Iterator[bool]:
        for lose in self._lose:
            self.lost += lose
            yield lose

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        outcome = continuation(details, request)
        outcome.result()  # the server answered
        if next(self._losing()):
            raise LostAnswer()
        return outcome

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return _Replies(continuation(details, requests), self._losing())


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "streamed"])
def test_a_step_whose_answer_was_lost_is_answered_again_not_applied_twice(
    server, client: RnnClient, streaming: bool
) -> None:
    whole = client.infer("sine-lstm", {"x": X[None, :, None]}, ["y"])["y"].reshape(-1)
    losing = LoseAnswers()
    with RnnClient(server.address) as lossy:
        lossy.stub = rpc.Stub(grpc.intercept_channel(grpc.insecure_channel(server.address), losing))
        session = SequenceSession(lossy, "sine-lstm", f"lossy-{streaming}", streaming, retry=FAST)
        pieces = [
            session.step({"x": X[None, a:b, None]}, ["y"], end=b == 24)["y"] for a, b in CHUNKS
        ]
        session.close()

    np.testing.assert_allclose(np.concatenate(pieces, axis=1).reshape(-1), whole, atol=1e-6)
    assert session.offset == 24
    assert session.retries == losing.lost >= 3


def test_without_offsets_a_lost_answer_is_not_retried(server) -> None:
    with RnnClient(server.address) as lossy:
        lossy.stub = rpc.Stub(
            grpc.intercept_channel(grpc.insecure_channel(server.address), LoseAnswers())
        )
        session = SequenceSession(lossy, "sine-lstm", "no-offsets", offsets=False, retry=FAST)
        session.step({"x": X[None, :3, None]})
        session.step({"x": X[None, 3:6, None]})
        with pytest.raises(InferenceError) as raised:
            session.step({"x": X[None, 6:9, None]})  # applied, but it cannot know
    assert raised.value.code == "UNAVAILABLE" and session.retries == 0


def test_a_step_the_server_counts_otherwise_raises_out_of_step(client: RnnClient) -> None:
    mine = SequenceSession(client, "sine-lstm", "shared-id")
    mine.step({"x": X[None, :3, None]})
    other = SequenceSession(client, "sine-lstm", "shared-id")  # one principal, one id
    other.step({"x": X[None, :5, None]})  # starts it again, 5 time steps

    with pytest.raises(SequenceOutOfStep) as raised:
        mine.step({"x": X[None, 3:6, None]})
    error = raised.value
    assert error.code == "FAILED_PRECONDITION"
    assert (error.client_offset, error.server_offset) == (3, 5)
    assert "the server has applied 5 time steps" in error.message
    assert "the sequence cannot go on from here" in error.message


def test_backoffs_grow_to_their_bound_with_jitter() -> None:
    policy = RetryPolicy(max_attempts=6, initial_backoff_s=0.1, max_backoff_s=0.5)
    backoffs = list(policy.backoffs())
    bounds = [0.1, 0.2, 0.4, 0.5, 0.5]
    assert len(backoffs) == 5
    assert all(bound / 2 <= wait <= bound for wait, bound in zip(backoffs, bounds, strict=True))
