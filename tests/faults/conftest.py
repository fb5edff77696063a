"""Fixtures of the fault tests: a redis-server of each test's own, which the test may pause,
kill and start again (the shared one of tests/conftest.py must stay up for the others), and
for the tests that leave Redis alone, that or the shared Redis Cluster, emptied first.
Every test here carries the marker `faults` (left out of the fast tier)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from processes import free_port
from redis.cluster import RedisCluster
from redis_helpers import RedisServer, sync_client

FAULTS = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if FAULTS in item.path.parents:
            item.add_marker(pytest.mark.faults)


@pytest.fixture
def own_redis(redis_url: str, tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server on a free port (`redis_url` first: it installs redis-server
    where the machine lacks it). Tests ask for it before `start_server`, so that it stops
    after their servers: a server's stop writes to it."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not on PATH"
    server = RedisServer(binary, free_port(), tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["server", "cluster"])
def some_redis(request: pytest.FixtureRequest) -> str:
    """The URL of a Redis with no sessions in it: a redis-server of the test's own, or the
    shared Redis Cluster (redis+cluster://), flushed (the gauges count what it holds). Asked
    for before `start_server`, as `own_redis` is."""
    if request.param == "server":
        return request.getfixturevalue("own_redis").url
    url: str = request.getfixturevalue("redis_cluster").url
    client = sync_client(url)
    client.flushall(target_nodes=RedisCluster.PRIMARIES)
    client.close()
    return url
