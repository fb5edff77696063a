"""Requests whose message must arrive in time: a front end's tasks from the request's
start until its message (a REST body, a gRPC ModelInfer message) is in, waiting for room
in the memory budget included, at most `request_body_timeout_s`.

A timer per request (asyncio.timeout) costs more than a small request itself, so one
watcher task looks over them all a few times a second and cancels the overdue: a request
may take up to a quarter of the timeout (at most 0.25 s) longer than it. Each step of the
watched task goes through `within`, which turns the watcher's cancellation into the
error the front end answers (a client's own cancellation goes on as it is):

    stalls.watch(task)
    try:
        arrival = await stalls.within(task, budget.receive(size), no_room)
        message = await stalls.within(task, read(), too_late)
        stalls.forget(task)          # in: the request runs as long as it needs
        ...
    finally:
        stalls.forget(task)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class Stalls:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._every_s = min(0.25, timeout_s / 4)
        self._deadlines: dict[asyncio.Task[object], float] = {}
        self._overdue: set[asyncio.Task[object]] = set()
        self._watcher: asyncio.Task[None] | None = None

    def watch(self, task: asyncio.Task[object]) -> None:
        """`task`'s message must be in within the timeout from now."""
        loop = asyncio.get_running_loop()
        self._deadlines[task] = loop.time() + self.timeout_s
        if self._watcher is None:
            self._watcher = loop.create_task(self._watch())

    def forget(self, task: asyncio.Task[object]) -> None:
        """`task`'s message is in, or it ended."""
        self._deadlines.pop(task, None)
        self._overdue.discard(task)

    async def within(
        self, task: asyncio.Task[object], step: Awaitable[T], late: Callable[[], Exception]
    ) -> T:
        """`step`'s result, or `late()` raised once `task` is overdue."""
        try:
            return await step
        except asyncio.CancelledError:
            if task not in self._overdue:  # not the watcher's doing
                raise
            self._overdue.discard(task)
            task.uncancel()
            raise late() from None

    async def _watch(self) -> None:
        """While any request is watched: cancels those past their deadline."""
        loop = asyncio.get_running_loop()
        try:
            while self._deadlines:
                await asyncio.sleep(self._every_s)
                now = loop.time()
                late = [task for task, deadline in self._deadlines.items() if deadline <= now]
                for task in late:
                    del self._deadlines[task]
                    self._overdue.add(task)
                    task.cancel()
        finally:
            self._watcher = None
