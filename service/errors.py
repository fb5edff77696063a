"""Protocol-neutral errors. Each carries the status a client should see.

Front ends map `code` to their protocol's status (gRPC: `grpc.StatusCode[code]`); the
message goes to the client verbatim, so it must name the field at fault and what was
expected. `details` carry what a client needs to act on the error without parsing the
message (the server's `sequence_offset` of a sequence it must resynchronise), by parameter
name: gRPC sends them as trailing metadata (`sequence-offset`) and, on a stream, as
parameters of the error's response. `client_error` is the one place an unexpected
exception becomes INTERNAL.
"""

from __future__ import annotations

import logging

from rnnserve.service.types import Parameter

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """Base class: an error a client caused or should be told about."""

    code = "INTERNAL"

    def __init__(self, message: str, details: dict[str, Parameter] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Parameter] = details or {}


class InvalidArgument(ServiceError):
    code = "INVALID_ARGUMENT"


class NotFound(ServiceError):
    code = "NOT_FOUND"


class FailedPrecondition(ServiceError):
    code = "FAILED_PRECONDITION"


class ResourceExhausted(ServiceError):
    code = "RESOURCE_EXHAUSTED"


class Unavailable(ServiceError):
    code = "UNAVAILABLE"


class Unauthenticated(ServiceError):
    code = "UNAUTHENTICATED"


class PermissionDenied(ServiceError):
    code = "PERMISSION_DENIED"


def client_error(error: Exception, what: str) -> ServiceError:
    """What a client hears when `what` (an RPC, a route) failed with `error`: our own
    errors verbatim; anything else is a bug, logged here with its traceback and answered
    INTERNAL without its details (no traceback ever reaches a client)."""
    if isinstance(error, ServiceError):
        return error
    log.error("%s failed", what, exc_info=error)
    return ServiceError(f"internal error in {what}; the server log has the details")
