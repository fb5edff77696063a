"""Protocol-neutral errors. Each carries the status a client should see.

The gRPC adapter maps `code` to `grpc.StatusCode[code]`; the message goes to the client
verbatim, so it must name the field at fault and what was expected.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base class: an error a client caused or should be told about."""

    code = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


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
