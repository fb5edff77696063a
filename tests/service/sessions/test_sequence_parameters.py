"""The sequence parameters a request carries, with Triton's names and types."""

from __future__ import annotations

import pytest

from rnnserve.service.errors import InvalidArgument
from rnnserve.service.sessions import SequenceParameters, parse_sequence_parameters


def test_a_request_without_sequence_parameters_belongs_to_no_session() -> None:
    sequence = parse_sequence_parameters({"max_output_length": 5})
    assert sequence == SequenceParameters(0, start=False, end=False)
    assert not sequence.in_session


@pytest.mark.parametrize("no_session", [0, ""])
def test_zero_and_empty_ids_mean_no_session(no_session: int | str) -> None:
    assert not parse_sequence_parameters({"sequence_id": no_session}).in_session


@pytest.mark.parametrize("sequence_id", [1, 2**64 - 1, "user-42"])
def test_integer_and_string_ids_open_a_session(sequence_id: int | str) -> None:
    sequence = parse_sequence_parameters(
        {"sequence_id": sequence_id, "sequence_start": True, "sequence_end": False}
    )
    assert sequence == SequenceParameters(sequence_id, start=True, end=False)
    assert sequence.in_session


def test_an_offset_is_the_time_steps_before_the_request() -> None:
    sequence = parse_sequence_parameters({"sequence_id": 7, "sequence_offset": 12})
    assert sequence == SequenceParameters(7, offset=12)
    assert parse_sequence_parameters({"sequence_id": 7}).offset is None


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"sequence_id": True}, "sequence_id must be an int64/uint64 or a string, got bool"),
        ({"sequence_id": 1.5}, "sequence_id must be an int64/uint64 or a string, got float"),
        ({"sequence_id": -1}, "sequence_id must be between 0 and 18446744073709551615, got -1"),
        ({"sequence_id": 2**64}, "sequence_id must be between 0 and 18446744073709551615"),
        ({"sequence_id": 7, "sequence_start": 1}, "sequence_start must be a bool, got int"),
        ({"sequence_id": 7, "sequence_end": "true"}, "sequence_end must be a bool, got str"),
        ({"sequence_start": True}, "sequence_start and sequence_end need a non-zero sequence_id"),
        ({"sequence_id": "", "sequence_end": True}, "need a non-zero sequence_id"),
        (
            {"sequence_id": 7, "sequence_offset": -1},
            "sequence_offset must be between 0 and 9223372036854775807, got -1",
        ),
        ({"sequence_id": 7, "sequence_offset": "3"}, "sequence_offset must be an int64, got str"),
        ({"sequence_id": 7, "sequence_offset": 2.0}, "sequence_offset must be an int64, got float"),
        ({"sequence_id": 7, "sequence_offset": True}, "sequence_offset must be an int64, got bool"),
        ({"sequence_offset": 3}, "sequence_offset needs a non-zero sequence_id"),
    ],
)
def test_a_parameter_of_the_wrong_type_is_named_with_the_type_expected(
    parameters: dict, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=f"^parameters? .*{message}") as raised:
        parse_sequence_parameters(parameters)
    assert raised.value.code == "INVALID_ARGUMENT"
