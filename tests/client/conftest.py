"""Fixtures of the client tests: `any_client` is a client of each kind in turn (sync and
asyncio, over gRPC and over REST: each test that takes it runs with all four, or with the
two gRPC ones where it is marked `grpc_only`), `connected` makes more of the same kind."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from client_kinds import CLIENTS, GRPC_KINDS, Blocking, Served, connect, disconnect

from rnnserve.client.api import Client


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "grpc_only: checks streaming, which REST lacks")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`kind`, the client a test uses: each of CLIENTS, or of GRPC_KINDS for a check marked
    `grpc_only`."""
    if "kind" in metafunc.fixturenames:
        grpc_only = metafunc.definition.get_closest_marker("grpc_only") is not None
        metafunc.parametrize("kind", GRPC_KINDS if grpc_only else list(CLIENTS))


@pytest.fixture
def connected(kind: str) -> Iterator[Callable[..., Client | Blocking]]:
    """connected(server or address, **options): clients of this test's kind, closed after
    it."""
    clients: list[Client | Blocking] = []

    def open_one(target: Served | str, **options: Any) -> Client | Blocking:
        clients.append(connect(kind, target, **options))
        return clients[-1]

    yield open_one
    for client in clients:
        disconnect(client)


@pytest.fixture
def any_client(server, connected) -> Client | Blocking:
    """A client of this test's kind, connected to the shared server."""
    return connected(server)
