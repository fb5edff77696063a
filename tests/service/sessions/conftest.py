"""Fixtures for the sessions tests: stores of each kind (the real redis-server behind
`redis_url` comes from tests/conftest.py)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import pytest

from rnnserve.service.device import CPU_PROVIDER, StateDevice
from rnnserve.service.sessions import StateStore
from rnnserve.service.sessions.memory_store import MemoryStore
from rnnserve.service.sessions.owned.store import OwnedStore
from rnnserve.service.sessions.redis_store import RedisStore
from rnnserve.service.settings import Settings

# memory-device: the memory store with device_state on, its "device" the CPU provider's.
STORES = ["memory", "memory-device", "redis", "owned", "redis-cluster", "owned-cluster"]


def store_factory(request: pytest.FixtureRequest, kind: str) -> Callable[..., StateStore]:
    """Builds stores of one `kind` of STORES (those in Redis on one redis-server, or on the
    cluster when the kind says so); stores in Redis of one test share a fresh namespace."""
    if kind == "memory":
        return MemoryStore
    if kind == "memory-device":
        return functools.partial(MemoryStore, device=StateDevice(CPU_PROVIDER, Settings()))
    store, _, cluster = kind.partition("-")
    if cluster:
        url = request.getfixturevalue("redis_cluster").url
    else:
        url = request.getfixturevalue("redis_url")
    namespace = f"test-{time.monotonic_ns()}"
    build = RedisStore if store == "redis" else OwnedStore
    return lambda idle_timeout_s=60.0: build(url, idle_timeout_s, namespace)


@pytest.fixture(params=STORES)
def make_store(request: pytest.FixtureRequest) -> Callable[..., StateStore]:
    """Builds stores of one kind (make_store(idle_timeout_s))."""
    return store_factory(request, request.param)
