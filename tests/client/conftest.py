"""Fixtures of the client tests: `any_client` is the sync or the asyncio client (each test
that takes it runs with both), `connected` makes more of the same kind."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from client_kinds import Blocking, connect, disconnect

from rnnserve.client.client import RnnClient


@pytest.fixture(params=["sync", "aio"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def connected(kind: str) -> Iterator[Callable[..., RnnClient | Blocking]]:
    """connected(address, **options): clients of this test's kind, closed after it."""
    clients: list[RnnClient | Blocking] = []

    def open_one(address: str, **options: Any) -> RnnClient | Blocking:
        clients.append(connect(kind, address, **options))
        return clients[-1]

    yield open_one
    for client in clients:
        disconnect(client)


@pytest.fixture
def any_client(server, connected) -> RnnClient | Blocking:
    """The sync or the asyncio client, connected to the shared server."""
    return connected(server.address)
