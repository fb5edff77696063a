"""Fixtures of the fault tests: a redis-server of each test's own, which the test may pause,
kill and start again (the shared one of tests/conftest.py must stay up for the others)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults_helpers import RedisServer
from processes import free_port


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
