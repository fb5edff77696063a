"""Fixtures for the sessions tests: a real redis-server and stores of each kind."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from service.sessions import StateStore
from service.sessions.memory_store import MemoryStore
from service.sessions.redis_store import RedisStore


def _redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    # The machine lacks it: install it, as the container image would.
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=300"]
    subprocess.run([*apt, "update", "-qq"], check=True, capture_output=True)
    subprocess.run([*apt, "install", "-y", "-qq", "redis-server"], check=True, capture_output=True)
    found = shutil.which("redis-server")
    assert found, "apt-get installed redis-server but it is not on PATH"
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free port, without persistence, stopped after the tests."""
    directory = tmp_path_factory.mktemp("redis")
    port = _free_port()
    server = subprocess.Popen(
        [
            _redis_server_binary(),
            "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
            "--save", "", "--appendonly", "no", "--daemonize", "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    try:
        _wait_for_redis(url, server)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait_for_redis(url: str, server: subprocess.Popen[bytes]) -> None:
    client = redis.Redis.from_url(url)
    for _ in range(200):
        assert server.poll() is None, "redis-server exited at start"
        try:
            client.ping()
            return
        except redis.ConnectionError:
            time.sleep(0.05)
        finally:
            client.close()
    raise AssertionError(f"redis-server at {url} never answered")


@pytest.fixture(params=["memory", "redis"])
def make_store(
    request: pytest.FixtureRequest,
) -> Callable[[float], StateStore]:
    """Builds stores of one kind; Redis stores of one test share a fresh namespace."""
    if request.param == "memory":
        return MemoryStore
    url = request.getfixturevalue("redis_url")
    namespace = f"test-{request.node.name}-{time.monotonic_ns()}"
    return lambda idle_timeout_s=60.0: RedisStore(url, idle_timeout_s, namespace)
