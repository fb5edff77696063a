"""What the client raises when a call fails."""

from __future__ import annotations

from rnnserve.protocol.codec import Parameter
from rnnserve.protocol.sequences import SEQUENCE_OFFSET


class InferenceError(Exception):
    """The server answered with an error, or could not be reached.

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


class SequenceOutOfStep(InferenceError):
    """A sequence's step was refused because the server has applied another number of
    time steps than the client counted: continuing could only give wrong answers."""

    def __init__(self, error: InferenceError, client_offset: int) -> None:
        server = error.sequence_offset
        super().__init__(
            error.code,
            f"{error.message} (the client counted {client_offset} time steps, the server "
            f"{server}; the sequence cannot go on from here: begin it again)",
            error.details,
        )
        self.client_offset = client_offset
        self.server_offset = server
