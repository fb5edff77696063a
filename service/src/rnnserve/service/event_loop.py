"""The event loop a server process runs on: uvloop's where it is installed (a dependency of
the server on Linux and macOS), else asyncio's own.

Every request goes through the loop several times (grpc.aio hands each call and each of its
messages to it), and asyncio's loop schedules each callback in Python; uvloop's does it in C
on libuv, as MLServer and uvicorn run by default. The benchmarks' floors run on the loop the
server runs on, so that their ratios measure our code alone (bench/echo.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Literal

from rnnserve.protocol.errors import UsageError

EventLoop = Literal["auto", "uvloop", "asyncio"]
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factory(choice: EventLoop) -> LoopFactory | None:
    """What `asyncio.Runner(loop_factory=...)` takes for `choice`: None for asyncio's loop."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise UsageError(
                "event_loop uvloop: uvloop is not installed here (pip install uvloop), or "
                "set event_loop to asyncio"
            ) from None
        return None
    return uvloop.new_event_loop


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """The loop as the start-up log names it: its module ("uvloop", "asyncio")."""
    return type(loop).__module__.split(".")[0]
