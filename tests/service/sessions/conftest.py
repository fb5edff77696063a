"""Fixtures for the sessions tests: stores of each kind (the real redis-server behind
`redis_url` comes from tests/conftest.py)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from rnnserve.service.sessions import StateStore
from rnnserve.service.sessions.memory_store import MemoryStore
from rnnserve.service.sessions.owned_store import OwnedStore
from rnnserve.service.sessions.redis_store import RedisStore


@pytest.fixture(params=["memory", "redis", "owned"])
def make_store(
    request: pytest.FixtureRequest,
) -> Callable[[float], StateStore]:
    """Builds stores of one kind; stores in Redis of one test share a fresh namespace."""
    if request.param == "memory":
        return MemoryStore
    url = request.getfixturevalue("redis_url")
    namespace = f"test-{request.node.name}-{time.monotonic_ns()}"
    kind = RedisStore if request.param == "redis" else OwnedStore
    return lambda idle_timeout_s=60.0: kind(url, idle_timeout_s, namespace)
