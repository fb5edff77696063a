"""What the client raises when a call fails."""

from __future__ import annotations


class InferenceError(Exception):
    """The server answered with an error, or could not be reached.

    `code` is the gRPC status name ("NOT_FOUND", "INVALID_ARGUMENT", "UNAVAILABLE"...).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
