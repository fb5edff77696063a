"""One exception class per status code, each raised from a real refusal where a server
gives one: by every client (sync and asyncio, gRPC and REST), and from raw calls through
the one mapping (`from_rpc_error`, `from_rest`) for the statuses the clients' own methods
cannot meet."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from client_kinds import Blocking, made_in, session_of
from security_helpers import TOKENS, bearer

from rnnserve.client import errors
from rnnserve.client.aio.stream import AsyncStream
from rnnserve.client.errors import (
    Cancelled,
    FailedPrecondition,
    InferenceError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    SequenceOutOfStep,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
    error_for,
    from_rest,
    from_rpc_error,
    from_stream_reply,
)
from rnnserve.client.stream import Stream
from rnnserve.protocol import messages as pb
from rnnserve.protocol import rpc

X = np.sin(np.linspace(0, 2, 6, dtype=np.float32)).reshape(1, 6, 1)


def refusal(call, kind: type[InferenceError]) -> InferenceError:
    with pytest.raises(kind) as raised:
        call()
    assert raised.value.code == kind.CODE  # type: ignore[attr-defined]
    return raised.value


def test_the_request_and_the_sequence_refusals_have_their_classes(any_client, kind) -> None:
    sequence = {"sequence_id": f"refusals-{kind}"}
    any_client.infer("sine-gru", {"x": X}, ["y"], {**sequence, "sequence_start": True})

    bad_shape = refusal(lambda: any_client.infer("sine-gru", {"x": X[0]}), InvalidArgument)
    unknown = refusal(lambda: any_client.model_metadata("sine-gru", "7"), NotFound)
    wrong_offset = {**sequence, "sequence_offset": 2}
    miscounted = refusal(
        lambda: any_client.infer("sine-gru", {"x": X}, parameters=wrong_offset), FailedPrecondition
    )
    any_client.infer("sine-gru", {"x": X}, ["y"], {**sequence, "sequence_end": True})

    assert "input 'x'" in bad_shape.message
    assert "sine-gru" in unknown.message
    assert "the server has applied 6 time steps" in miscounted.message
    assert miscounted.sequence_offset == 6


def test_a_session_limit_raises_resource_exhausted(
    start_module_server, sine_repository, connected
) -> None:
    limited = start_module_server(sine_repository, env={"RNNSERVE_MAX_SESSIONS": "1"})
    client = connected(limited)
    first = session_of(client, "sine-lstm", "the-one")
    first.step({"x": X})

    full = refusal(lambda: session_of(client, "sine-lstm", "one-too-many").step({"x": X}),
                   ResourceExhausted)  # fmt: skip

    assert "max_sessions" in full.message
    first.step({"x": X}, end=True)


def test_an_unreachable_server_raises_unavailable(connected) -> None:
    unreachable = connected("127.0.0.1:1", timeout_s=5)

    refusal(unreachable.server_ready, Unavailable)


def test_credentials_refused_raise_unauthenticated_and_permission_denied(
    token_server, pki, connected
) -> None:
    nobody = connected(token_server, root_certificates=pki.ca)
    alice = connected(token_server, root_certificates=pki.ca, token=TOKENS["alice"][0])

    refusal(lambda: nobody.infer("sine-lstm", {"x": X}), Unauthenticated)
    refusal(lambda: nobody.model_metadata("sine-lstm"), Unauthenticated)
    assert alice.infer("sine-lstm", {"x": X}, ["y"])["y"].shape == (1, 6, 1)
    with pytest.raises(grpc.RpcError) as raised:  # statistics need the admin role
        token_server.stub.ModelStatistics(pb.ModelStatisticsRequest(), metadata=bearer("alice"))
    assert isinstance(from_rpc_error(raised.value), PermissionDenied)


def test_an_rpc_the_server_lacks_raises_unimplemented(server) -> None:
    lacking = server.channel.unary_unary(f"/{rpc.SERVICE_NAME}/NoSuchCall")
    with pytest.raises(grpc.RpcError) as raised:
        lacking(b"")
    assert isinstance(from_rpc_error(raised.value), Unimplemented)


@pytest.mark.grpc_only
def test_a_cancelled_stream_raises_cancelled(any_client) -> None:
    if isinstance(any_client, Blocking):
        stream = made_in(any_client.loop, AsyncStream, any_client.target, None, None)
    else:
        stream = Stream(any_client, None, None)
    stream.cancel()

    refusal(stream.receive, Cancelled)
    assert stream.done


def test_out_of_step_is_a_failed_precondition_with_both_counts() -> None:
    error = FailedPrecondition("the server has applied 5 time steps", {"sequence_offset": "5"})

    out_of_step = SequenceOutOfStep(error, client_offset=3)

    assert isinstance(out_of_step, FailedPrecondition) and out_of_step.code == "FAILED_PRECONDITION"
    assert (out_of_step.client_offset, out_of_step.server_offset) == (3, 5)


@pytest.mark.parametrize("status", [s for s in grpc.StatusCode if s != grpc.StatusCode.OK])
def test_every_status_code_has_its_class(status: grpc.StatusCode) -> None:
    error = error_for(status.name, "why", {"sequence_offset": "4"})

    assert type(error).CODE == status.name == error.code  # type: ignore[attr-defined]
    assert type(error).__name__ == status.name.title().replace("_", "")
    assert isinstance(error, InferenceError) and getattr(errors, type(error).__name__) is type(
        error
    )
    assert (str(error), error.message, error.sequence_offset) == (f"{status.name}: why", "why", 4)


def test_codes_outside_grpc_and_errors_without_codes_still_map() -> None:
    stream_error = pb.ModelStreamInferResponse(error_message="it broke")

    assert type(error_for("STREAM_ERROR", "x")) is InferenceError
    assert isinstance(from_stream_reply(stream_error), Unknown)
    assert isinstance(from_rest(404, b"<html>not here</html>"), NotFound)
    assert isinstance(from_rest(503, b'{"error": "draining"}'), Unavailable)
    conflict = from_rest(400, b'{"error": "offset", "code": "FAILED_PRECONDITION", '
                              b'"sequence_offset": 5}')  # fmt: skip
    assert isinstance(conflict, FailedPrecondition) and conflict.sequence_offset == 5
