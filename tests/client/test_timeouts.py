"""Timeouts, with every client: each call's own `timeout` (the client's `timeout_s` unless
given), a stream's deadline (gRPC), and a sequence step's wait for its answer, after which
the step is sent again the same and answered once. The slow request is a sine
sequence of 100,000 time steps (tens of milliseconds of ONNX Runtime), given a millisecond."""

from __future__ import annotations

import numpy as np
import pytest
from client_kinds import session_of, streaming_needs_grpc

from rnnserve.client.client import build_request
from rnnserve.client.errors import DeadlineExceeded
from rnnserve.client.retry import NO_RETRIES

LONG = np.sin(np.linspace(0, 600, 100_000, dtype=np.float32)).reshape(1, -1, 1)
TINY = 0.001


def test_a_call_past_its_timeout_raises_deadline_exceeded(server, any_client, connected) -> None:
    impatient = connected(server, timeout_s=TINY)  # every call's default

    with pytest.raises(DeadlineExceeded):
        any_client.infer("sine-gru", {"x": LONG}, ["y"], timeout=TINY)
    with pytest.raises(DeadlineExceeded):
        impatient.infer("sine-gru", {"x": LONG}, ["y"])

    assert impatient.infer("sine-gru", {"x": LONG}, ["y"], timeout=60)["y"].shape == LONG.shape
    assert impatient.model_metadata("sine-gru", timeout=60).name == "sine-gru"


@pytest.mark.grpc_only
def test_a_stream_past_its_deadline_raises_deadline_exceeded(any_client) -> None:
    request = build_request("sine-gru", {"x": LONG}, ["y"])

    with pytest.raises(DeadlineExceeded):
        list(any_client.stream(iter([request]), timeout=TINY))
    assert [r.outputs["y"].shape for r in any_client.stream(iter([request]))] == [LONG.shape]


@pytest.mark.parametrize("streaming", [False, True], ids=["ModelInfer", "ModelStreamInfer"])
def test_a_step_not_answered_in_time_is_answered_when_sent_again(
    any_client, kind: str, streaming: bool
) -> None:
    """The late step may or may not have been applied; sent again with its offset, it is
    applied once either way, and the sequence goes on exactly."""
    streaming_needs_grpc(kind, streaming)
    whole = any_client.infer("sine-lstm", {"x": LONG}, ["y"])["y"]
    head, tail = LONG[:, :10], LONG[:, 10:]
    sequence = session_of(
        any_client, "sine-lstm", f"late-{kind}-{streaming}", streaming, retry=NO_RETRIES,
        timeout=TINY,  # each step's, unless the step says otherwise
    )  # fmt: skip
    first = sequence.step({"x": head}, ["y"], timeout=60)["y"]

    with pytest.raises(DeadlineExceeded):
        sequence.step({"x": tail}, ["y"], end=True)
    second = sequence.step({"x": tail}, ["y"], end=True, timeout=60)["y"]
    sequence.close()

    np.testing.assert_allclose(np.concatenate([first, second], axis=1), whole, atol=1e-5)
    assert sequence.offset == LONG.shape[1]


@pytest.mark.grpc_only
def test_a_session_stream_past_its_deadline_raises_deadline_exceeded(any_client, kind) -> None:
    sequence = session_of(
        any_client, "sine-lstm", f"stream-deadline-{kind}", streaming=True, retry=NO_RETRIES,
        stream_timeout=TINY,
    )  # fmt: skip

    with pytest.raises(DeadlineExceeded) as raised:
        sequence.step({"x": LONG}, ["y"], timeout=60)
    sequence.close()

    assert "no answer on the stream" not in raised.value.message  # the stream's deadline
