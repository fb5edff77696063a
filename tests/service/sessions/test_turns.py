"""Turns: one holder per session, waiters served in arrival order, cancellation safe."""

from __future__ import annotations

import asyncio

from rnnserve.service.sessions.turns import Turns


def test_waiters_get_the_turn_in_arrival_order() -> None:
    async def scenario() -> None:
        turns = Turns()
        order: list[int] = []

        async def use(index: int) -> None:
            await turns.take("k")
            order.append(index)
            await asyncio.sleep(0)
            turns.give("k")

        await asyncio.gather(*(use(i) for i in range(10)))
        assert order == list(range(10))
        assert not turns.held("k")

    asyncio.run(scenario())


def test_free_keys_are_taken_at_once_and_held_until_given_back() -> None:
    async def scenario() -> None:
        turns = Turns()
        assert turns.take_all_free(["a", "b"])
        assert turns.held("a") and turns.held("b")
        waiter = asyncio.create_task(turns.take("a"))
        await asyncio.sleep(0)
        assert not waiter.done()
        turns.give_all(["a", "b"])  # "a" to its waiter, "b" freed
        await waiter
        assert turns.held("a") and not turns.held("b")
        turns.give("a")
        assert not turns.held("a")

    asyncio.run(scenario())


def test_keys_of_which_one_is_held_are_not_taken_at_once() -> None:
    turns = Turns()
    assert turns.take_all_free(["b"])
    assert not turns.take_all_free(["a", "b", "c"])
    assert not turns.held("a") and not turns.held("c")


def test_a_waiter_cancelled_while_waiting_blocks_no_one() -> None:
    async def scenario() -> None:
        turns = Turns()
        await turns.take("k")
        cancelled = asyncio.create_task(turns.take("k"))
        behind = asyncio.create_task(turns.take("k"))
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.sleep(0)
        turns.give("k")
        await asyncio.wait_for(behind, 5)
        turns.give("k")
        assert not turns.held("k")

    asyncio.run(scenario())


def test_a_waiter_cancelled_after_being_handed_the_turn_passes_it_on() -> None:
    async def scenario() -> None:
        turns = Turns()
        await turns.take("k")
        handed = asyncio.create_task(turns.take("k"))
        behind = asyncio.create_task(turns.take("k"))
        await asyncio.sleep(0)
        turns.give("k")  # `handed` has the turn but has not run yet
        handed.cancel()
        await asyncio.gather(handed, return_exceptions=True)
        await asyncio.wait_for(behind, 5)
        turns.give("k")
        assert not turns.held("k")

    asyncio.run(scenario())
