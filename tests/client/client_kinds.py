"""Every kind of client behind one face, for checks that all must pass: the sync and the
asyncio client of each protocol (gRPC, REST). An asyncio client is driven from the test's
synchronous code (Blocking); `session_of` opens the sequence session that goes with a
client of any kind."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Iterator
from typing import Any, Protocol

import pytest

from rnnserve.client.aio import AsyncRestClient, AsyncRnnClient, AsyncSequenceSession
from rnnserve.client.api import Client
from rnnserve.client.client import RnnClient
from rnnserve.client.rest import RestClient
from rnnserve.client.sequence import SequenceSession

CLIENTS: dict[str, type[Any]] = {
    "sync": RnnClient, "aio": AsyncRnnClient, "rest": RestClient, "rest-aio": AsyncRestClient,
}  # fmt: skip
GRPC_KINDS = ["sync", "aio"]
REST_KINDS = ["rest", "rest-aio"]
ASYNC_KINDS = ["aio", "rest-aio"]


class Served(Protocol):
    """A running server's addresses (tests/conftest.py's RunningServer)."""

    @property
    def address(self) -> str: ...  # gRPC's HOST:PORT

    @property
    def http_url(self) -> str: ...  # REST's http(s)://HOST:PORT


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


def connect(kind: str, target: Served | str, **options: Any) -> Client | Blocking:
    """A client of `kind` (a key of CLIENTS) to `target`: a server (its gRPC or its REST
    port, as the kind speaks) or an address; an asyncio one on an event loop of its own."""
    if isinstance(target, str):
        address = target
    else:
        address = target.http_url if kind in REST_KINDS else target.address
    if kind in ASYNC_KINDS:
        return made_in(asyncio.new_event_loop(), CLIENTS[kind], address, **options)
    return CLIENTS[kind](address, **options)


def disconnect(client: Client | Blocking) -> None:
    client.close()
    if isinstance(client, Blocking):
        client.loop.close()


def session_of(client: Client | Blocking, *args: Any, **kwargs: Any) -> Any:
    """SequenceSession(client, ...), or AsyncSequenceSession for an asyncio client."""
    if isinstance(client, Blocking):
        return Blocking(AsyncSequenceSession(client.target, *args, **kwargs), client.loop)
    return SequenceSession(client, *args, **kwargs)


def streaming_needs_grpc(kind: str, streaming: bool) -> None:
    """Skips a streaming run of a check with a REST client: the REST API has no streaming
    (tests/client/test_rest.py checks that a streaming session over REST is refused)."""
    if streaming and kind in REST_KINDS:
        pytest.skip("streaming is gRPC's alone")
