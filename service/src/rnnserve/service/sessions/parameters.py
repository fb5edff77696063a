"""The sequence parameters of a request, with Triton's names and types, and our
`sequence_offset` (int64: the time steps the sequence consumed before this request)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from rnnserve.protocol.sequences import SEQUENCE_END, SEQUENCE_ID, SEQUENCE_OFFSET, SEQUENCE_START
from rnnserve.service.errors import InvalidArgument
from rnnserve.service.types import Parameter

UINT64_MAX = 2**64 - 1
INT64_MAX = 2**63 - 1
SEQUENCE_PARAMETERS = frozenset({SEQUENCE_ID, SEQUENCE_START, SEQUENCE_END, SEQUENCE_OFFSET})


@dataclass(init=False, slots=True)
class SequenceParameters:
    """A request's sequence parameters, parsed once (not frozen: made for every request,
    a frozen one costs compiled code five times a plain one)."""

    sequence_id: int | str  # 0 or "" means the request belongs to no session
    start: bool
    end: bool
    offset: int | None  # sequence_offset, when the request carries it

    # __init__ by hand: compiled, a dataclass's generated one runs as Python, at three times
    # the cost; made for every request.
    def __init__(
        self,
        sequence_id: int | str,
        start: bool = False,
        end: bool = False,
        offset: int | None = None,
    ) -> None:
        self.sequence_id = sequence_id
        self.start = start
        self.end = end
        self.offset = offset

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
        sequence_id,
        _flag(parameters, "sequence_start"),
        _flag(parameters, "sequence_end"),
        _offset(parameters),
    )
    if not sequence.in_session and (sequence.start or sequence.end):
        raise InvalidArgument(
            "parameters sequence_start and sequence_end need a non-zero sequence_id"
        )
    if not sequence.in_session and sequence.offset is not None:
        raise InvalidArgument(f"parameter {SEQUENCE_OFFSET} needs a non-zero sequence_id")
    check_offset(f"parameter {SEQUENCE_OFFSET}", sequence.offset)
    return sequence


def check_offset(what: str, offset: int | None) -> None:
    """An offset is a count of time steps. A start's is 0, or the count of the live
    sequence it begins again (accounting.py)."""
    if offset is not None and not 0 <= offset <= INT64_MAX:
        raise InvalidArgument(f"{what} must be between 0 and {INT64_MAX}, got {offset}")


def _offset(parameters: Mapping[str, Parameter]) -> int | None:
    value = parameters.get(SEQUENCE_OFFSET)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(
            f"parameter {SEQUENCE_OFFSET} must be an int64, got {type(value).__name__}"
        )
    return value


def _flag(parameters: Mapping[str, Parameter], name: str) -> bool:
    value = parameters.get(name, False)
    if not isinstance(value, bool):
        raise InvalidArgument(f"parameter {name} must be a bool, got {type(value).__name__}")
    return value
