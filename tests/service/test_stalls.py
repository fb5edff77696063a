"""Requests whose message must arrive in time (service/stalls.py): one watcher cancels the
overdue, and their step raises the front end's error for it; a cancellation of the
request's own goes on as it is, and a request whose message is in is never cancelled."""

from __future__ import annotations

import asyncio

import pytest

from rnnserve.service.errors import DeadlineExceeded
from rnnserve.service.stalls import Stalls


def late() -> DeadlineExceeded:
    return DeadlineExceeded("too late")


def test_a_request_whose_message_does_not_come_in_time_gets_the_late_error() -> None:
    async def scenario() -> None:
        stalls = Stalls(timeout_s=0.05)

        async def request() -> str:
            task = asyncio.current_task()
            assert task is not None
            stalls.watch(task)
            try:
                await stalls.within(task, asyncio.sleep(10), late)
            except DeadlineExceeded as error:
                await asyncio.sleep(0)  # no longer cancelled: it goes on, and answers
                return error.message
            finally:
                stalls.forget(task)
            return "never"

        assert await asyncio.wait_for(request(), 5) == "too late"

    asyncio.run(scenario())


def test_a_cancellation_of_the_requests_own_goes_on_as_it_is() -> None:
    async def scenario() -> None:
        stalls = Stalls(timeout_s=10)

        async def request() -> None:
            task = asyncio.current_task()
            assert task is not None
            stalls.watch(task)
            try:
                await stalls.within(task, asyncio.sleep(10), late)
            finally:
                stalls.forget(task)

        running = asyncio.create_task(request())
        await asyncio.sleep(0.01)
        running.cancel()  # the client went away
        with pytest.raises(asyncio.CancelledError):
            await running

    asyncio.run(scenario())


def test_a_request_whose_message_is_in_runs_as_long_as_it_needs() -> None:
    async def scenario() -> None:
        stalls = Stalls(timeout_s=0.02)

        async def request() -> str:
            task = asyncio.current_task()
            assert task is not None
            stalls.watch(task)
            message = await stalls.within(task, asyncio.sleep(0, "message"), late)
            stalls.forget(task)  # in
            await asyncio.sleep(0.2)  # ten timeouts of work
            return message

        assert await request() == "message"

    asyncio.run(scenario())
