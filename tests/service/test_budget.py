"""The memory budget (service/dataplane/budget.py): a request past max_request_elements, or
one that would take the requests in flight past max_inflight_bytes, is refused
RESOURCE_EXHAUSTED naming the limit and its size; the bytes held return when it ends."""

from __future__ import annotations

import asyncio

import pytest

from rnnserve.service.dataplane.budget import Budget
from rnnserve.service.errors import ResourceExhausted
from rnnserve.service.tasks.footprint import Footprint


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


# Messages: held from the moment they arrive -------------------------------------------


def test_a_message_is_held_from_before_it_arrives_to_the_end_of_its_block() -> None:
    async def scenario() -> None:
        budget = Budget(max_request_elements=10**9, max_inflight_bytes=10_000)
        with await budget.receive(4_000) as arrival:  # the largest it may be
            assert (budget.receiving, budget.held) == (4_000, 0)
            arrival.arrived(1_500)  # what came
            assert (budget.receiving, budget.held) == (0, 1_500)
        assert (budget.receiving, budget.held) == (0, 0)

    asyncio.run(scenario())


def test_messages_wait_in_line_for_room_and_are_received_in_their_order() -> None:
    async def scenario() -> None:
        budget = Budget(max_request_elements=10**9, max_inflight_bytes=10_000)
        order: list[str] = []

        async def message(name: str, largest: int, size: int) -> None:
            with await budget.receive(largest) as arrival:
                order.append(name)
                arrival.arrived(size)
                await asyncio.sleep(0.01)

        with budget.hold(footprint(10, 10), "m"):  # 4,000 bytes of a request at work
            first = asyncio.create_task(message("first", 6_000, 6_000))
            await asyncio.sleep(0)
            waiting = [
                asyncio.create_task(message(name, 4_000, 100)) for name in ("second", "third")
            ]
            await asyncio.sleep(0.001)
            assert order == ["first"]  # 4,000 + 6,000: no room for more
            assert not any(task.done() for task in waiting)
        await asyncio.gather(first, *waiting)
        assert order == ["first", "second", "third"]
        assert (budget.held, budget.receiving) == (0, 0)

    asyncio.run(scenario())


def test_messages_being_received_never_refuse_a_small_request() -> None:
    async def scenario() -> None:
        budget = Budget(max_request_elements=10**9, max_inflight_bytes=10_000)
        with await budget.receive(10_000), budget.hold(footprint(1, 1), "m"):
            assert (budget.receiving, budget.held) == (10_000, 40)

    asyncio.run(scenario())


def test_a_message_that_stops_waiting_leaves_the_line_and_its_room() -> None:
    async def scenario() -> None:
        budget = Budget(max_request_elements=10**9, max_inflight_bytes=10_000)
        with await budget.receive(8_000) as blocking:
            late = asyncio.create_task(budget.receive(5_000))
            small = asyncio.create_task(budget.receive(2_000))  # behind it: first come
            await asyncio.sleep(0)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(asyncio.shield(small), 0.01)
            late.cancel()  # gives up: the one behind it fits
            with await small:
                assert budget.receiving == 10_000
            blocking.arrived(1)
        assert (budget.receiving, budget.held) == (0, 0)

    asyncio.run(scenario())


def test_a_message_that_could_never_fit_is_refused_at_once() -> None:
    async def scenario() -> None:
        budget = Budget(max_request_elements=10**9, max_inflight_bytes=10_000)
        with pytest.raises(ResourceExhausted, match=r"at most 10,000 bytes together"):
            await budget.receive(10_001)

    asyncio.run(scenario())


def test_a_message_that_found_no_room_in_time_is_told_what_holds_the_budget() -> None:
    async def scenario() -> None:
        budget = Budget(max_request_elements=10**9, max_inflight_bytes=10_000)
        with budget.hold(footprint(10, 10), "m"), await budget.receive(3_000):
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(budget.receive(5_000), 0.01)
            refused = budget.waited(5_000)
        assert (budget.held, budget.receiving) == (0, 0)
        assert refused.code == "RESOURCE_EXHAUSTED"
        assert refused.message == (
            "the requests in flight hold 4,000 bytes and messages being received 3,000 of at "
            "most 10,000 (max_inflight_bytes): no room for a message of up to 5,000 bytes; "
            "retry later"
        )

    asyncio.run(scenario())
