"""Protocol-neutral errors. Each carries the status a client should see.

Front ends map `code` to their protocol's status (gRPC: `grpc.StatusCode[code]`); the
message goes to the client verbatim, so it must name the field at fault and what was
expected. `details` carry what a client needs to act on the error without parsing the
message (the server's `sequence_offset` of a sequence it must resynchronise), by parameter
name: gRPC sends them as trailing metadata (`sequence-offset`) and, on a stream, as
parameters of the error's response; REST as headers (`sequence-offset`) and fields of the
error's JSON body. `client_error` is the one place an unexpected exception becomes
INTERNAL; `decoding()` makes wire data that does not decode INVALID_ARGUMENT.
"""

from __future__ import annotations

import logging
from typing import ClassVar

from rnnserve.protocol.codec import CodecError
from rnnserve.service.types import Parameter

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """Base class: an error a client caused or should be told about. `code` is a class
    variable each subclass sets (a ClassVar: compiled, a plain class attribute would be an
    instance attribute's default, which a subclass's value does not set)."""

    code: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str, details: dict[str, Parameter] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Parameter] = details or {}


class InvalidArgument(ServiceError):
    code: ClassVar[str] = "INVALID_ARGUMENT"


class NotFound(ServiceError):
    code: ClassVar[str] = "NOT_FOUND"


class FailedPrecondition(ServiceError):
    code: ClassVar[str] = "FAILED_PRECONDITION"


class ResourceExhausted(ServiceError):
    code: ClassVar[str] = "RESOURCE_EXHAUSTED"


class Unavailable(ServiceError):
    code: ClassVar[str] = "UNAVAILABLE"


class DeadlineExceeded(ServiceError):
    code: ClassVar[str] = "DEADLINE_EXCEEDED"


class Aborted(ServiceError):
    """What the client relied on was lost to a server fault (a sequence's state): begin
    again; retrying the same request cannot succeed."""

    code: ClassVar[str] = "ABORTED"


class Unauthenticated(ServiceError):
    code: ClassVar[str] = "UNAUTHENTICATED"


class PermissionDenied(ServiceError):
    code: ClassVar[str] = "PERMISSION_DENIED"


def detail_headers(error: ServiceError) -> tuple[tuple[str, str], ...]:
    """An error's details as header (REST) or trailing metadata (gRPC) names and values:
    `sequence_offset` -> `sequence-offset`."""
    return tuple((name.replace("_", "-"), str(value)) for name, value in error.details.items())


def client_error(error: Exception, what: str) -> ServiceError:
    """What a client hears when `what` (an RPC, a route) failed with `error`: our own
    errors verbatim; anything else is a bug, logged here with its traceback and answered
    INTERNAL without its details (no traceback ever reaches a client)."""
    if isinstance(error, ServiceError):
        # Its traceback is not needed any more, and the caller keeps the error beside the
        # frames it references (a cycle): without this, the request's arrays in those
        # frames stay resident until the cyclic collector happens to run.
        error.__traceback__ = error.__context__ = None
        return error
    log.error("%s failed", what, exc_info=error)
    return ServiceError(f"internal error in {what}; the server log has the details")


class _Decoding:
    """`decoding()`'s block (a class, not a generator: entered on every request)."""

    __slots__ = ()

    def __enter__(self) -> None:
        pass

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: object
    ) -> None:
        if isinstance(error, CodecError):
            raise InvalidArgument(str(error)) from None


_DECODING = _Decoding()


def decoding() -> _Decoding:
    """Wire data that does not decode (the protocol codec's CodecError, which names the
    tensor or field at fault) is the client's mistake: INVALID_ARGUMENT, in a `with`
    block."""
    return _DECODING
