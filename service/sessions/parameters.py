"""The sequence parameters of a request, with Triton's names and types."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from rnnserve.service.errors import InvalidArgument
from rnnserve.service.types import Parameter

UINT64_MAX = 2**64 - 1
SEQUENCE_PARAMETERS = frozenset({"sequence_id", "sequence_start", "sequence_end"})


@dataclass(frozen=True)
class SequenceParameters:
    sequence_id: int | str  # 0 or "" means the request belongs to no session
    start: bool = False
    end: bool = False

    @property
    def in_session(self) -> bool:
        return self.sequence_id not in (0, "")


def parse_sequence_parameters(parameters: Mapping[str, Parameter]) -> SequenceParameters:
    """Reads `sequence_id`, `sequence_start` and `sequence_end`; a wrong type is the
    client's mistake and is named in the error."""
    sequence_id = parameters.get("sequence_id", 0)
    # bool is an int in Python, but not an id on the wire.
    if isinstance(sequence_id, bool) or not isinstance(sequence_id, int | str):
        raise InvalidArgument(
            "parameter sequence_id must be an int64/uint64 or a string, "
            f"got {type(sequence_id).__name__}"
        )
    if isinstance(sequence_id, int) and not 0 <= sequence_id <= UINT64_MAX:
        raise InvalidArgument(
            f"parameter sequence_id must be between 0 and {UINT64_MAX}, got {sequence_id}"
        )
    sequence = SequenceParameters(
        sequence_id, _flag(parameters, "sequence_start"), _flag(parameters, "sequence_end")
    )
    if not sequence.in_session and (sequence.start or sequence.end):
        raise InvalidArgument(
            "parameters sequence_start and sequence_end need a non-zero sequence_id"
        )
    return sequence


def _flag(parameters: Mapping[str, Parameter], name: str) -> bool:
    value = parameters.get(name, False)
    if not isinstance(value, bool):
        raise InvalidArgument(f"parameter {name} must be a bool, got {type(value).__name__}")
    return value
