"""Servers under test, each a subprocess on a free local port: the echo floor and rnnserve."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rnnserve.protocol.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Running:
    process: subprocess.Popen[bytes]
    target: str  # host:port of the gRPC endpoint
    metrics_url: str = ""
    ca: Path | None = None  # TLS: the CA that signed the server's certificate

    @property
    def pid(self) -> int:
        return self.process.pid

    def channel(self) -> Any:
        """A gRPC channel to the server, over TLS when it speaks TLS."""
        import grpc

        if self.ca is None:
            return grpc.insecure_channel(self.target)
        return grpc.secure_channel(self.target, grpc.ssl_channel_credentials(self.ca.read_bytes()))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_ready(running: Running, timeout_s: float, log: Path) -> None:
    """Poll the gRPC health service (open whatever the server's tokens) until it says
    SERVING; fail with the server's log if the server dies."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    serving = health_pb2.HealthCheckResponse.SERVING
    deadline = time.monotonic() + timeout_s
    with running.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if running.process.poll() is not None:
                raise UsageError(f"server exited with {running.process.returncode}: {_tail(log)}")
            with contextlib.suppress(grpc.RpcError):
                # The stubs' HealthStub declares none of the methods its __init__ sets.
                check = health.Check  # type: ignore[attr-defined]
                if check(health_pb2.HealthCheckRequest(), timeout=1).status == serving:
                    return
            time.sleep(0.1)
    raise UsageError(f"server at {running.target} not ready after {timeout_s:.0f} s: {_tail(log)}")


def _tail(log: Path) -> str:
    return " | ".join(log.read_text(errors="replace").strip().splitlines()[-5:])


@contextlib.contextmanager
def _started(
    command: list[str],
    target: str,
    log: Path,
    env: dict[str, str],
    timeout_s: float,
    metrics_url: str = "",
    ca: Path | None = None,
) -> Iterator[Running]:
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )
    running = Running(process, target, metrics_url, ca)
    try:
        wait_ready(running, timeout_s, log)
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def echo_server(
    workdir: Path,
    procs: int = 1,
    model: Path | None = None,
    listeners: int = 1,
    cpu_affinity: str = "none",
    busy_poll_us: int = 0,
) -> Iterator[Running]:
    """The echo floor; `procs` processes sharing its port (the floor of as many workers),
    `listeners` grpc.aio servers in each (as rnnserve's `grpc_listeners`), their threads
    pinned as rnnserve's `cpu_affinity` pins, their event loops polling as its
    `busy_poll_us` keeps its own. With `model`, the model floor of that ONNX file
    (bench/echo.py)."""
    port = free_port()
    command = [
        sys.executable, "-m", "rnnserve.bench.echo", "--port", str(port), "--procs", str(procs),
        "--listeners", str(listeners), "--cpu-affinity", cpu_affinity,
        "--busy-poll-us", str(busy_poll_us),
    ]  # fmt: skip
    if model is not None:
        command += ["--model", str(model)]
    name = "echo" if model is None else "model-floor"
    if listeners > 1:
        name += f"-{listeners}-listeners"
    if cpu_affinity != "none":
        name += "-pinned"
    if busy_poll_us:
        name += "-polling"
    log = workdir / f"{name}.log"
    with _started(command, f"127.0.0.1:{port}", log, {}, 30) as running:
        yield running


@contextlib.contextmanager
def rnnserve(
    workdir: Path,
    repository: Path,
    settings: dict[str, str],
    timeout_s: float = 120,
    ca: Path | None = None,
) -> Iterator[Running]:
    """`rnnserve serve` on free ports; `settings` become RNNSERVE_* environment variables.
    A server given tls_cert and tls_key in `settings` is reached trusting `ca`."""
    port, metrics_port = free_port(), free_port()
    command = [
        sys.executable,
        "-m",
        "rnnserve",
        "serve",
        "--model-repository",
        str(repository),
        "--grpc-port",
        str(port),
        "--http-port",
        str(free_port()),
        "--metrics-port",
        str(metrics_port),
    ]
    env = {
        f"RNNSERVE_{name.upper()}": value
        for name, value in {"host": "127.0.0.1", **settings}.items()
    }
    log = workdir / "rnnserve.log"
    with _started(
        command,
        f"127.0.0.1:{port}",
        log,
        env,
        timeout_s,
        f"http://127.0.0.1:{metrics_port}/metrics",
        ca,
    ) as running:
        yield running


@contextlib.contextmanager
def redis_server(workdir: Path, timeout_s: float = 30) -> Iterator[str]:
    """A redis-server on a free port without persistence, for rnnserve's redis state store
    (which several workers need); yields its URL."""
    import redis

    binary = shutil.which("redis-server")
    if not binary:
        raise UsageError("redis-server not found: install it (apt-get install redis-server)")
    port = free_port()
    command = [
        binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
        "--save", "", "--appendonly", "no", "--daemonize", "no",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise UsageError(f"redis-server exited with {process.returncode} at start")
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise UsageError(f"redis-server at {url} never answered") from None
                time.sleep(0.05)
        yield url
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=30)
