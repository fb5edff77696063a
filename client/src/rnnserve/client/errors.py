"""What the client raises when a call fails: one exception class per status code.

Every class derives from InferenceError, which carries the gRPC status name (`code`), the
server's `message` and the `details` it attached. Catch a class for the one cause
(`except NotFound`), InferenceError for all:

    try:
        client.infer("sine-lstm", inputs, timeout=0.5)
    except DeadlineExceeded:
        ...  # not answered within half a second
    except InferenceError as error:
        print(error.code, error.message)

`error_for` picks the class for a status name, and `from_rpc_error`, `from_stream_reply` and
`from_rest` read the status from where each transport puts it: the one mapping for the sync,
asyncio and REST clients.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, ClassVar

import grpc

from rnnserve.protocol import codec, rest
from rnnserve.protocol.codec import Parameter
from rnnserve.protocol.sequences import ERROR_CODE, SEQUENCE_OFFSET


class InferenceError(Exception):
    """The server answered with an error, or could not be reached, or did not answer in time.

    `code` is the gRPC status name ("NOT_FOUND", "INVALID_ARGUMENT", "UNAVAILABLE"...).
    `details` are what the server attached for the client to act on, by parameter name
    (`sequence_offset`: the time steps the server has applied of a sequence), from the
    call's trailing metadata (`sequence-offset`), on a stream the error's parameters, over
    REST the error's JSON body.
    """

    def __init__(
        self, code: str, message: str, details: dict[str, Parameter] | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details: dict[str, Parameter] = details or {}

    @property
    def sequence_offset(self) -> int | None:
        """The server's count of a sequence's time steps, when the error names it."""
        value = self.details.get(SEQUENCE_OFFSET)
        return None if value is None else int(value)


class StatusError(InferenceError):
    """An error of one status code: the class says the code, `CODE`."""

    CODE: ClassVar[str]

    def __init__(self, message: str, details: dict[str, Parameter] | None = None) -> None:
        super().__init__(self.CODE, message, details)


class Cancelled(StatusError):
    """The call was cancelled: by the client, or by a server that stopped while it ran."""

    CODE = "CANCELLED"


class Unknown(StatusError):
    """An error the server did not classify (another server's stream error without a code)."""

    CODE = "UNKNOWN"


class InvalidArgument(StatusError):
    """The request is wrong: the message names the input, output or parameter at fault."""

    CODE = "INVALID_ARGUMENT"


class DeadlineExceeded(StatusError):
    """No answer within the call's timeout (the server may have done the work)."""

    CODE = "DEADLINE_EXCEEDED"


class NotFound(StatusError):
    """No such model, or no such version of it."""

    CODE = "NOT_FOUND"


class AlreadyExists(StatusError):
    """What the call would create exists already (this server never says it)."""

    CODE = "ALREADY_EXISTS"


class PermissionDenied(StatusError):
    """The caller's principal lacks the role the call needs."""

    CODE = "PERMISSION_DENIED"


class ResourceExhausted(StatusError):
    """A limit was reached: sessions, message size; the message names it."""

    CODE = "RESOURCE_EXHAUSTED"


class FailedPrecondition(StatusError):
    """The request does not fit the server's state: a sequence that is not active, an
    offset the server counts otherwise, a model that failed to load."""

    CODE = "FAILED_PRECONDITION"


class Aborted(StatusError):
    """The call was aborted. From this server: a sequence's state was lost through a server
    fault (its worker died, or Redis lost its data); begin the sequence again."""

    CODE = "ABORTED"


class OutOfRange(StatusError):
    """A value past a valid range (this server says INVALID_ARGUMENT instead)."""

    CODE = "OUT_OF_RANGE"


class Unimplemented(StatusError):
    """The server does not offer the call."""

    CODE = "UNIMPLEMENTED"


class Internal(StatusError):
    """A bug, in the server or in an answer the client could not decode."""

    CODE = "INTERNAL"


class Unavailable(StatusError):
    """The server could not be reached, is not ready, or is going away: try again."""

    CODE = "UNAVAILABLE"


class DataLoss(StatusError):
    """Unrecoverable loss of data (this server never says it)."""

    CODE = "DATA_LOSS"


class Unauthenticated(StatusError):
    """No valid credentials: a missing or wrong bearer token."""

    CODE = "UNAUTHENTICATED"


ERRORS: dict[str, type[StatusError]] = {kind.CODE: kind for kind in StatusError.__subclasses__()}


class SequenceOutOfStep(FailedPrecondition):
    """A sequence's step was refused because the server has applied another number of
    time steps than the client counted: continuing could only give wrong answers."""

    def __init__(self, error: InferenceError, client_offset: int) -> None:
        server = error.sequence_offset
        super().__init__(
            f"{error.message} (the client counted {client_offset} time steps, the server "
            f"{server}; the sequence cannot go on from here: begin it again)",
            error.details,
        )
        self.client_offset = client_offset
        self.server_offset = server


def error_for(
    code: str, message: str, details: dict[str, Parameter] | None = None
) -> InferenceError:
    """The error of status `code`: its own class, or InferenceError for a name gRPC lacks."""
    kind = ERRORS.get(code)
    return InferenceError(code, message, details) if kind is None else kind(message, details)


def from_rpc_error(error: grpc.RpcError) -> InferenceError:
    """A failed gRPC call (sync or asyncio), with its trailing metadata as details
    (`sequence-offset` -> `sequence_offset`)."""
    # Pairs either way: grpc's sync errors hold (key, value) namedtuples, which its stubs
    # declare as a class without iteration; grpc.aio's Metadata iterates as pairs.
    trailers: Iterable[tuple[str, str | bytes]] = error.trailing_metadata() or ()  # type: ignore[assignment]
    details: dict[str, Parameter] = {
        key.replace("-", "_"): value for key, value in trailers if isinstance(value, str)
    }
    return error_for(error.code().name, error.details() or "", details)


def from_stream_reply(reply: Any) -> InferenceError:
    """An error a stream reported (the stream stays open): its status code and details come
    as parameters of its response, where the server sends them."""
    details = codec.parameters_from_proto(reply.infer_response.parameters, "error response")
    code = str(details.pop(ERROR_CODE, Unknown.CODE))
    return error_for(code, reply.error_message, details)


def from_rest(status: int, body: bytes) -> InferenceError:
    """The error a non-200 REST answer carries: {"error": message, "code": status name}, and
    its details beside them (`sequence_offset`); the HTTP status's code when the body has
    none (another server)."""
    try:
        answer = json.loads(body)
        message, code = answer.pop("error"), answer.pop("code", None)
    except (ValueError, TypeError, KeyError, AttributeError):
        message, code, answer = body.decode(errors="replace") or f"HTTP {status}", None, {}
    code = code or rest.CODE_OF_STATUS.get(status, Unknown.CODE)
    return error_for(code, str(message), answer)
