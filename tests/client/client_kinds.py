"""The sync and the asyncio client behind one face, for checks that both must pass: an
asyncio client is driven from the test's synchronous code (Blocking); `session_of` opens
the sequence session that goes with a client of either kind."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Iterator
from typing import Any

from rnnserve.client.aio import AsyncRnnClient, AsyncSequenceSession
from rnnserve.client.client import RnnClient
from rnnserve.client.sequence import SequenceSession


class Blocking:
    """An asyncio object used from synchronous code: each coroutine its methods return runs
    to its end on `loop`, an async iterator is read as an iterator, `with` is `async with`.
    Attributes read through."""

    def __init__(self, target: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.target = target
        self.loop = loop

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.target, name)
        if not callable(value):
            return value

        def run(*args: Any, **kwargs: Any) -> Any:
            outcome = value(*args, **kwargs)
            if inspect.isawaitable(outcome):
                return self.loop.run_until_complete(outcome)
            if inspect.isasyncgen(outcome):
                return self._iterate(outcome)
            return outcome

        return run

    def _iterate(self, items: AsyncIterator[Any]) -> Iterator[Any]:
        while True:
            try:
                yield self.loop.run_until_complete(anext(items))
            except StopAsyncIteration:
                return

    def __enter__(self) -> Blocking:
        self.loop.run_until_complete(self.target.__aenter__())
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.run_until_complete(self.target.__aexit__(*exc))


def made_in(loop: asyncio.AbstractEventLoop, factory: Any, *args: Any, **kwargs: Any) -> Blocking:
    """`factory(*args, **kwargs)` made while `loop` runs (grpc.aio channels and calls belong
    to a running loop), driven through Blocking."""

    async def made() -> Any:
        return factory(*args, **kwargs)

    return Blocking(loop.run_until_complete(made()), loop)


def connect(kind: str, address: str, **options: Any) -> RnnClient | Blocking:
    """A client of `kind` ("sync" or "aio"); an asyncio one on an event loop of its own."""
    if kind == "sync":
        return RnnClient(address, **options)
    return made_in(asyncio.new_event_loop(), AsyncRnnClient, address, **options)


def disconnect(client: RnnClient | Blocking) -> None:
    client.close()
    if isinstance(client, Blocking):
        client.loop.close()


def session_of(client: RnnClient | Blocking, *args: Any, **kwargs: Any) -> Any:
    """SequenceSession(client, ...), or AsyncSequenceSession for an asyncio client."""
    if isinstance(client, Blocking):
        return Blocking(AsyncSequenceSession(client.target, *args, **kwargs), client.loop)
    return SequenceSession(client, *args, **kwargs)
