"""Real servers for the service tests: `python -m rnnserve serve` as a subprocess on free
ports, ready when ServerReady says so, stopped with SIGTERM and required to exit 0.

    def test_x(server):                      # the shared server over the tiny repository
        ...
    def test_y(start_server, tiny_repository):   # a private one with its own settings
        other = start_server(tiny_repository, env={"RNNSERVE_STATE_STORE": "redis"})
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from service.protocol.generated import grpc_service_pb2 as pb
from service.protocol.generated import grpc_service_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    address: str  # host:port of the gRPC API
    grpc_port: int
    metrics_port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    channel: grpc.Channel = field(init=False)
    stub: pb_grpc.GRPCInferenceServiceStub = field(init=False)

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(self.address)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM, then the exit status (killed after STOP_TIMEOUT_S: a failure)."""
        self.channel.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"server ignored SIGTERM; log:\n{self.log()[-4000:]}") from None


def launch(
    repository: Path,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    wait_ready: bool = True,
) -> RunningServer:
    grpc_port, metrics_port = free_port(), free_port()
    log_path = log_dir / f"serve-{grpc_port}.log"
    command = [
        sys.executable, "-m", "rnnserve", "serve",
        "--model-repository", str(repository), "--host", "127.0.0.1",
        "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port), *args,
    ]  # fmt: skip
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, **(env or {})},
            stdout=log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
    server = RunningServer(f"127.0.0.1:{grpc_port}", grpc_port, metrics_port, process, log_path)
    if wait_ready:
        wait_until_ready(server)
    return server


def wait_until_ready(server: RunningServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(
                f"server exited with {server.process.returncode} at start; log:\n"
                f"{server.log()[-4000:]}"
            )
        try:
            if server.stub.ServerReady(pb.ServerReadyRequest(), timeout=1).ready:
                return
        except grpc.RpcError:
            pass  # not listening yet
        time.sleep(0.05)
    server.stop()
    raise AssertionError(f"server not ready after {START_TIMEOUT_S} s; log:\n{server.log()}")


StartServer = Callable[..., RunningServer]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Starts private servers: start_server(repository, env={...}, args=[...]).
    Each one is stopped with SIGTERM at the end of the test and must exit 0."""
    started: list[RunningServer] = []

    def start(
        repository: Path,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        wait_ready: bool = True,
    ) -> RunningServer:
        server = launch(repository, tmp_path, env, args, wait_ready)
        started.append(server)
        return server

    yield start
    for server in started:
        code = server.stop()
        assert code == 0, f"server exited with {code}; log:\n{server.log()[-4000:]}"


@pytest.fixture(scope="session")
def server(
    tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """One server over the nine tiny default models, shared by the whole session."""
    running = launch(tiny_repository, tmp_path_factory.mktemp("server"))
    yield running
    code = running.stop()
    assert code == 0, f"server exited with {code}; log:\n{running.log()[-4000:]}"
