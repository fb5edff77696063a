"""Requests in flight (service/in_flight.py): counted while in their `with` block, and a wait
for none that ends when the last leaves, or says after its grace period that some stay."""

from __future__ import annotations

import asyncio

from rnnserve.service.in_flight import InFlight


def test_with_none_in_flight_the_wait_for_none_ends_at_once() -> None:
    async def scenario() -> None:
        in_flight = InFlight()
        with in_flight.request():
            assert in_flight.count == 1
        assert in_flight.count == 0
        assert await asyncio.wait_for(in_flight.idle(10), 1)

    asyncio.run(scenario())


def test_the_wait_for_none_ends_when_the_last_request_leaves() -> None:
    async def scenario() -> None:
        in_flight = InFlight()

        async def request(hold: asyncio.Event) -> None:
            with in_flight.request():
                await hold.wait()

        first, second = asyncio.Event(), asyncio.Event()
        requests = [asyncio.create_task(request(first)), asyncio.create_task(request(second))]
        await asyncio.sleep(0)
        waits = [asyncio.create_task(in_flight.idle(10)) for _ in range(2)]
        first.set()
        await asyncio.sleep(0.01)
        assert not any(wait.done() for wait in waits)  # one is still in flight
        second.set()
        assert await asyncio.wait_for(asyncio.gather(*waits), 1) == [True, True]
        await asyncio.gather(*requests)

    asyncio.run(scenario())


def test_the_wait_for_none_says_after_its_grace_period_that_some_stay() -> None:
    async def scenario() -> None:
        in_flight = InFlight()
        with in_flight.request():
            assert not await in_flight.idle(0.01)
        # A later wait is not answered by the earlier, timed-out one's event.
        with in_flight.request():
            waiting = asyncio.create_task(in_flight.idle(10))
            await asyncio.sleep(0.01)
            assert not waiting.done()
        assert await asyncio.wait_for(waiting, 1)

    asyncio.run(scenario())
