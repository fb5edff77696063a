"""The memory budget (service/dataplane/budget.py): a request past max_request_elements, or
one that would take the requests in flight past max_inflight_bytes, is refused
RESOURCE_EXHAUSTED naming the limit and its size; the bytes held return when it ends."""

from __future__ import annotations

import pytest

from rnnserve.service.dataplane.budget import Budget
from rnnserve.service.errors import ResourceExhausted
from rnnserve.service.tasks.base import Footprint


def footprint(rows: int, steps: int) -> Footprint:
    """A request of `rows` x `steps` whose every element is 4 bytes, 10 per row-step."""
    return Footprint(rows * steps, 4 * rows * steps, rows * steps, 8 * rows * steps, rows, steps)


def test_a_request_implying_too_many_elements_is_refused_naming_the_limit() -> None:
    budget = Budget(max_request_elements=1000, max_inflight_bytes=10**9)
    with pytest.raises(ResourceExhausted) as refused, budget.hold(footprint(10, 11), "m"):
        pass
    assert refused.value.message == (
        "the request implies 1,100 elements (inputs 110, outputs 110, recurrent work 880: "
        "10 rows x 11 time steps of model 'm'), 4,400 bytes; at most 1,000 elements are "
        "accepted (max_request_elements): send fewer rows or shorter pieces of the sequence"
    )
    assert budget.held == 0


def test_the_requests_in_flight_share_max_inflight_bytes() -> None:
    budget = Budget(max_request_elements=10**9, max_inflight_bytes=10_000)
    with budget.hold(footprint(10, 15), "m"):  # 6,000 bytes
        assert budget.held == 6000
        with pytest.raises(ResourceExhausted) as refused, budget.hold(footprint(10, 15), "m"):
            pass
        with budget.hold(footprint(10, 10), "m"):  # 4,000 more: exactly the limit
            assert budget.held == 10_000
    assert budget.held == 0
    assert "the requests in flight hold 6,000 bytes of at most 10,000" in refused.value.message
    assert refused.value.message.endswith("(max_inflight_bytes); retry later")
    alone = footprint(10, 26)  # past the limit by itself: it never fits
    with (
        pytest.raises(ResourceExhausted, match=r"at most 10,000 bytes together"),
        budget.hold(alone, "m"),
    ):
        pass
