"""ModelInfer receives its message within the memory budget (service/grpc/receiving.py):
as many messages are received at once as the budget has room for at the largest size
(max_message_bytes), the others wait for room; a call whose client has not sent its
message within request_body_timeout_s is dropped DEADLINE_EXCEEDED, and a call without a
request message, or with one that is none, refused INVALID_ARGUMENT; the server answers
others all along."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_helpers import infer_request
from polling import eventually
from scrape import scrape

from rnnserve.client.client import RnnClient
from rnnserve.protocol import rpc

TIMEOUT_S = 5  # request_body_timeout_s
LARGEST = 2**20  # max_message_bytes
METHOD = f"/{rpc.SERVICE_NAME}/ModelInfer"
MESSAGES = "rnnserve_request_message_bytes{}"


@pytest.fixture(scope="module")
def small_server(start_module_server, sine_repository: Path):  # type: ignore[no-untyped-def]
    """Room for two messages of the largest size at once."""
    return start_module_server(
        sine_repository,
        args=["--request-body-timeout-s", str(TIMEOUT_S), "--max-message-bytes", str(LARGEST),
              "--max-inflight-bytes", str(2 * LARGEST)],
    )  # fmt: skip


def good_request() -> bytes:
    x = np.zeros((1, 2, 1), np.float32)
    return bytes(infer_request("sine-lstm", {"x": x}, ["y"]).SerializeToString())


def withheld(release: threading.Event, message: bytes | None = None) -> Iterator[bytes]:
    """A call's messages: none until `release`, then `message` if any."""
    release.wait(timeout=60)
    if message is not None:
        yield message


def test_a_message_not_sent_in_time_is_dropped_deadline_exceeded(small_server) -> None:
    release = threading.Event()
    with grpc.insecure_channel(small_server.address) as channel:
        call = channel.stream_unary(METHOD)
        with pytest.raises(grpc.RpcError) as dropped:
            call(withheld(release), timeout=60)
        release.set()

    assert dropped.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert dropped.value.details() == (
        f"the request's message did not arrive within {TIMEOUT_S} s (request_body_timeout_s)"
    )


def test_no_more_messages_are_received_at_once_than_the_budget_has_room_for(
    small_server,
) -> None:
    release = threading.Event()
    with grpc.insecure_channel(small_server.address) as channel:
        call = channel.stream_unary(METHOD)
        holding = [call.future(withheld(release, good_request()), timeout=60) for _ in range(2)]
        eventually(
            lambda: scrape(small_server.metrics_url)[MESSAGES] == 2 * LARGEST,
            "two calls receiving, each counted at the largest message",
        )
        third = channel.unary_unary(METHOD).future(good_request(), timeout=60)
        with pytest.raises(grpc.FutureTimeoutError):  # waiting for room: not read
            third.result(timeout=0.5)
        release.set()  # the two send their messages, and make room
        answers = [future.result() for future in [*holding, third]]

    assert len(answers) == 3
    eventually(lambda: scrape(small_server.metrics_url)[MESSAGES] == 0, "no message held")


def test_a_call_without_a_request_message_or_with_one_that_is_none_is_refused(
    small_server,
) -> None:
    with grpc.insecure_channel(small_server.address) as channel:
        with pytest.raises(grpc.RpcError) as empty:
            channel.stream_unary(METHOD)(iter(()), timeout=60)
        with pytest.raises(grpc.RpcError) as garbage:
            channel.unary_unary(METHOD)(b"\xff\xff\xff", timeout=60)

    assert (empty.value.code(), empty.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT, "the call carried no request message",
    )  # fmt: skip
    assert (garbage.value.code(), garbage.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT, "the request message is not a ModelInferRequest",
    )  # fmt: skip
    with RnnClient(small_server.address) as client:  # and the server answers on
        assert client.infer("sine-lstm", {"x": np.zeros((1, 2, 1), np.float32)})
    assert "Traceback" not in small_server.log()
