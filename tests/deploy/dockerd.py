"""A Docker engine for the deployment tests, as a new user on a fresh machine would get one.

The daemon that answers is used as it is. Where none answers, the test (as root) installs
Debian's docker.io and starts a private dockerd: its own socket, its data root kept between
runs (the image cache), no bridge and no iptables rules, since every container of the tests
runs on the host's network. That daemon is stopped, by its PID, when the session ends. Runs
of the test on one machine take turns through a lock file: they share that data root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

PRIVATE_RUN = Path("/run/rnnserve-test-docker")
PRIVATE_DATA = Path("/var/lib/rnnserve-test-docker")
LOCK = Path("/var/lock/rnnserve-deploy-test.lock")
LOCK_WAIT_S = 1800  # another run of the deployment test on this machine
START_LIMIT_S = 60
KEEP_FREE = 30 * 2**30  # bytes of disk left free by the image and build caches


def apt_install(*packages: str) -> None:
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=300"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*apt, "update", "-qq"], check=True, capture_output=True, env=env)
    subprocess.run(
        [*apt, "install", "-y", "-qq", *packages], check=True, capture_output=True, env=env
    )


def answers(env: dict[str, str]) -> bool:
    try:
        result = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            env=env, capture_output=True, timeout=20,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0


@contextlib.contextmanager
def docker_engine(log_dir: Path) -> Iterator[dict[str, str]]:
    """The environment (DOCKER_HOST) in which `docker` reaches a daemon."""
    env = dict(os.environ)
    if shutil.which("docker") and answers(env):
        yield env
        return
    if os.geteuid() != 0:
        pytest.skip("Docker cannot run: no daemon answers and starting one needs root")
    if not (shutil.which("dockerd") and shutil.which("docker")):
        apt_install("docker.io")
    env["DOCKER_HOST"] = f"unix://{PRIVATE_RUN}/docker.sock"
    pid = _start_private_daemon(env, log_dir / "dockerd.log")
    try:
        yield env
        _prune(env)
    finally:
        _stop(pid)


def _prune(env: dict[str, str]) -> None:
    """Bounds the data root. Untagged images are the classic builder's cache of the stages
    before a target as well as earlier builds of a tag, and compose's builds leave a build
    cache: those a day old go. Where the disk has less than `KEEP_FREE` left (several runs
    in a day add gigabytes each), all of them go: the next run builds its stages again."""
    age = ["--filter", "until=24h"]
    if shutil.disk_usage(PRIVATE_DATA).free < KEEP_FREE:
        age = []
    for what in ("image", "builder"):
        subprocess.run(["docker", what, "prune", "--force", *age], env=env, capture_output=True)


def _start_private_daemon(env: dict[str, str], log_path: Path) -> int:
    pidfile = PRIVATE_RUN / "docker.pid"
    if pidfile.exists() and answers(env):
        return int(pidfile.read_text())  # left running by an interrupted run of this test
    PRIVATE_RUN.mkdir(parents=True, exist_ok=True)
    command = [
        "dockerd",
        f"--host={env['DOCKER_HOST']}", f"--data-root={PRIVATE_DATA}",
        f"--exec-root={PRIVATE_RUN}/exec", f"--pidfile={pidfile}",
        "--bridge=none", "--iptables=false", "--ip6tables=false",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        daemon = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + START_LIMIT_S
    while not answers(env):
        if daemon.poll() is not None or time.monotonic() > deadline:
            _stop(daemon.pid)
            tail = log_path.read_text(errors="replace")[-2000:]
            pytest.skip(f"Docker cannot run here: dockerd did not start:\n{tail}")
        time.sleep(0.5)
    return daemon.pid


def _stop(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A child of ours that exited stays a zombie until reaped: not alive.
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    return True
