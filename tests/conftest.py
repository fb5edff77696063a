"""Fixtures shared by every test package: the tiny model repository, real servers, a
real redis-server and real certificates.

Servers are `python -m rnnserve serve` subprocesses on free ports, ready when the gRPC
health service says SERVING, stopped with SIGTERM and required to exit 0:

    def test_x(server):                          # the shared server over the tiny repository
        ...
    def test_y(start_server, tiny_repository):   # a private one with its own settings
        other = start_server(tiny_repository, env={"RNNSERVE_STATE_STORE": "redis"})

Redis: `redis_url` is one redis-server, `redis_cluster` a Redis Cluster of six (three
masters, a replica each), `any_redis` each of the two in turn.
`token_server` (TLS, bearer tokens) and `mtls_server` (mutual TLS) serve sine-lstm to the
security tests of both protocols (tests/security_helpers.py has the principals' tokens).
`user_exports` are users' own models, exported as users export them (tests/user_exports.py).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from locks import exclusive
from model_cache import cached_exports, cached_repository, unchanged
from processes import free_port
from security_helpers import credentials, write_tokens

from rnnserve.bench.pki import Authority, Issued
from rnnserve.bench.redis_cluster import LocalCluster
from rnnserve.client.client import RnnClient
from rnnserve.protocol import rpc

# Many processes share few cores in a run (pytest-xdist workers, servers, Redis): torch
# trains on one thread in the tests, as the build does (export/build.py), rather than with
# a pool whose threads spin while they wait, burning the cores the others need. Set before
# any test module imports torch; the processes the tests start inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0
INSTALL_WAIT_S = 900.0  # another test process installing the same tool
# Session fixtures that start servers or export models with torch, few tests each: under
# pytest-xdist (--dist loadgroup) the tests that use one run on one worker, which makes it
# once, rather than every worker making its own.
ONE_WORKER = {
    "token_server": "tls",
    "mtls_server": "tls",
    "user_exports": "user-exports",
    "own_model_matrix": "own-model-matrix",
}
# Module fixtures that start servers: pytest-xdist would hand a module's tests to several
# workers, each starting the module's servers; its own group keeps them on one worker.
ONE_WORKER_PER_MODULE = "start_module_server"


LONG = ("docker", "slow", "faults")


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> Iterator[None]:
    """Before the other plugins (pytest-xdist reads the groups): the xdist groups of
    ONE_WORKER and ONE_WORKER_PER_MODULE. After them (every marker set, -m applied): the
    tests marked docker, slow or faults first, then those of a group, each in their order.
    pytest-xdist hands tests out in this order, and a run ends sooner when its longest
    tests do not start last (the wheel builds of tests/test_parts.py would, collected
    last)."""
    for item in items:
        groups = {ONE_WORKER[name] for name in item.fixturenames if name in ONE_WORKER}
        if ONE_WORKER_PER_MODULE in item.fixturenames:
            groups.add(item.module.__name__)
        if groups:
            item.add_marker(pytest.mark.xdist_group("+".join(sorted(groups))))
    yield
    items.sort(key=_order)


def _order(item: pytest.Item) -> tuple[bool, bool]:
    """The long tests first, then the groups (each runs whole on one worker): the loose
    tests, handed out one by one, fill the workers' ends."""
    long = any(item.get_closest_marker(name) for name in LONG)
    return not long, item.get_closest_marker("xdist_group") is None


@pytest.fixture(scope="session")
def tiny_repository() -> Iterator[Path]:
    """The nine default models, trained briefly at small sizes and fully verified: built
    once per content of what makes them and kept (tests/model_cache.py). Shared by every
    test and every run, so read only: a test that changes a repository copies what it
    needs into a folder of its own."""
    with unchanged(cached_repository(preset="tiny", seed=0)) as root:
        yield root


@pytest.fixture(scope="session")
def sine_repository(tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sine-lstm alone, for servers that need one model and should start fast."""
    root = tmp_path_factory.mktemp("sine-only")
    (root / "sine-lstm").symlink_to(tiny_repository / "sine-lstm")
    return root


@dataclass(frozen=True)
class Pki:
    """Certificates made for the tests: `ca` signs the server's (for 127.0.0.1 and
    localhost) and the clients' (subject CN = principal); `other_ca` signs `stranger`."""

    ca: Path
    other_ca: Path
    server: Issued
    alice: Issued
    bob: Issued
    expired: Issued  # alice's, expired yesterday
    stranger: Issued  # signed by the other CA


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, other = Authority(folder / "ca"), Authority(folder / "other", "another CA")
    return Pki(
        ca.cert, other.cert, ca.issue("127.0.0.1", server=True), ca.issue("alice"),
        ca.issue("bob"), ca.issue("alice expired", expired=True), other.issue("stranger"),
    )  # fmt: skip


@pytest.fixture(scope="session")
def user_exports() -> Iterator[dict]:
    """Recurrent models exported the way users export them (tests/user_exports.py):
    name -> (Export, path of its model.onnx), no rnnserve metadata. Exported once per
    content of tests/user_exports.py and kept (tests/model_cache.py), so read only."""
    from user_exports import export_all, exports_in

    with unchanged(cached_exports("user-exports", export_all)) as root:
        yield exports_in(root)


# Servers.


@dataclass
class RunningServer:
    address: str  # host:port of the gRPC API
    grpc_port: int
    metrics_port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    http_port: int = 0  # the REST API's (0: not served)
    credentials: grpc.ChannelCredentials | None = None  # a TLS server's, for `channel`
    channel: grpc.Channel = field(init=False)
    stub: rpc.Stub = field(init=False)

    def __post_init__(self) -> None:
        if self.credentials is None:
            self.channel = grpc.insecure_channel(self.address)
        else:
            self.channel = grpc.secure_channel(self.address, self.credentials)
        self.stub = rpc.Stub(self.channel)

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def http_url(self) -> str:
        """The REST API's root: http://127.0.0.1:PORT (https:// for a TLS server)."""
        scheme = "http" if self.credentials is None else "https"
        return f"{scheme}://127.0.0.1:{self.http_port}"

    def rest_infer(self, model: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """POST /v2/models/MODEL/infer over plain HTTP: the status and the JSON answer."""
        connection = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=30)
        try:
            connection.request("POST", f"/v2/models/{model}/infer", json.dumps(body))
            answer = connection.getresponse()
            return answer.status, json.loads(answer.read())
        finally:
            connection.close()

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
    credentials: grpc.ChannelCredentials | None = None,
    grpc_port: int = 0,
) -> RunningServer:
    """A server on `grpc_port` (a free one when 0) and free REST and metrics ports."""
    grpc_port, http_port, metrics_port = grpc_port or free_port(), free_port(), free_port()
    log_path = log_dir / f"serve-{grpc_port}-{metrics_port}.log"
    command = [
        sys.executable, "-m", "rnnserve", "serve",
        "--model-repository", str(repository), "--host", "127.0.0.1",
        "--grpc-port", str(grpc_port), "--http-port", str(http_port),
        "--metrics-port", str(metrics_port), *args,
    ]  # fmt: skip
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, **(env or {})},
            stdout=log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
    server = RunningServer(
        f"127.0.0.1:{grpc_port}", grpc_port, metrics_port, process, log_path, http_port,
        credentials,
    )  # fmt: skip
    if wait_ready:
        wait_until_ready(server)
    return server


def wait_until_ready(server: RunningServer) -> None:
    """Until the health service (open to every client, whatever the server's tokens) says
    SERVING, which it does once the models are loaded."""
    health = health_pb2_grpc.HealthStub(server.channel)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(
                f"server exited with {server.process.returncode} at start; log:\n"
                f"{server.log()[-4000:]}"
            )
        try:
            reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass  # not listening yet
        time.sleep(0.05)
    server.stop()
    raise AssertionError(f"server not ready after {START_TIMEOUT_S} s; log:\n{server.log()}")


StartServer = Callable[..., RunningServer]


@contextlib.contextmanager
def _private_servers(log_dir: Path) -> Iterator[StartServer]:
    started: list[tuple[RunningServer, int]] = []

    def start(
        repository: Path,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        wait_ready: bool = True,
        exit_code: int = 0,
        credentials: grpc.ChannelCredentials | None = None,
        grpc_port: int = 0,
    ) -> RunningServer:
        server = launch(repository, log_dir, env, args, wait_ready, credentials, grpc_port)
        started.append((server, exit_code))
        return server

    yield start
    for server, expected in started:
        code = server.stop()
        assert code == expected, f"server exited with {code}; log:\n{server.log()[-4000:]}"


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Starts private servers: start_server(repository, env={...}, args=[...]).
    Each one is stopped with SIGTERM at the end of the test and must exit with `exit_code`
    (0 unless told)."""
    with _private_servers(tmp_path) as start:
        yield start


@pytest.fixture(scope="module")
def start_module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartServer]:
    """start_server for servers shared by the tests of one module."""
    with _private_servers(tmp_path_factory.mktemp("servers")) as start:
        yield start


@pytest.fixture(scope="session")
def start_session_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartServer]:
    """start_server for servers shared by tests of several modules."""
    with _private_servers(tmp_path_factory.mktemp("servers")) as start:
        yield start


@pytest.fixture(scope="session")
def token_server(
    start_session_server: StartServer, sine_repository: Path, pki: Pki,
    tmp_path_factory: pytest.TempPathFactory,
) -> RunningServer:  # fmt: skip
    """TLS on both protocols, tokens for alice and mallory (infer) and ops (infer and
    admin), /metrics on its own host, the access log on."""
    tokens = write_tokens(tmp_path_factory.mktemp("tokens") / "tokens.txt")
    return start_session_server(
        sine_repository,
        args=["--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key),
              "--auth-tokens", str(tokens), "--metrics-host", "127.0.0.1", "--access-log"],
        credentials=credentials(pki.ca),
    )  # fmt: skip


@pytest.fixture(scope="session")
def mtls_server(
    start_session_server: StartServer, sine_repository: Path, pki: Pki
) -> RunningServer:
    """Mutual TLS with the test CA on both protocols (the principal is the certificate's
    CN), no reflection."""
    return start_session_server(
        sine_repository,
        env={"RNNSERVE_TLS_CLIENT_CA": str(pki.ca), "RNNSERVE_REFLECTION": "false"},
        args=["--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key)],
        credentials=credentials(pki.ca, pki.alice),
    )  # fmt: skip


@pytest.fixture(scope="session")
def server(
    tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """One server over the nine tiny default models, shared by the whole session."""
    running = launch(tiny_repository, tmp_path_factory.mktemp("server"))
    yield running
    code = running.stop()
    assert code == 0, f"server exited with {code}; log:\n{running.log()[-4000:]}"


@pytest.fixture
def client(server: RunningServer) -> Iterator[RnnClient]:
    """Our client, connected to the shared server."""
    with RnnClient(server.address) as rnn_client:
        yield rnn_client


# Redis.


def _redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    # The machine lacks it: install it, as the container image would.
    _apt_install("redis-server")
    found = shutil.which("redis-server")
    assert found, "apt-get installed redis-server but it is not on PATH"
    return found


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free port, without persistence, stopped after the tests."""
    directory = tmp_path_factory.mktemp("redis")
    port = free_port()
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


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A Redis Cluster of real redis-server processes on 127.0.0.1: three masters with a
    replica each (redis-cli --cluster create), stopped after the tests."""
    _redis_server_binary()
    with LocalCluster(tmp_path_factory.mktemp("redis-cluster"), ports=free_port) as cluster:
        yield cluster


@pytest.fixture(params=["server", "cluster"])
def any_redis(request: pytest.FixtureRequest) -> str:
    """Each Redis the stores run on, in turn: one redis-server (`redis_url`) and the
    cluster (`redis_cluster`, redis+cluster://)."""
    if request.param == "server":
        return request.getfixturevalue("redis_url")
    return request.getfixturevalue("redis_cluster").url


def _apt_install(package: str) -> None:
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=300"]
    subprocess.run([*apt, "update", "-qq"], check=True, capture_output=True)
    subprocess.run([*apt, "install", "-y", "-qq", package], check=True, capture_output=True)


@pytest.fixture(scope="session")
def perf_analyzer():
    """Triton's perf_analyzer from tritonclient 2.51's wheel, in a folder of its own (a
    cache, installed once), with the libraries it needs (libb64 from apt, as the container
    image would have it; the CUDA runtime wheel)."""
    import ctypes.util

    from rnnserve.bench.perf_analyzer import CACHE, install

    # One process installs it (pytest-xdist workers start at once); the others wait for it.
    with exclusive(CACHE.with_name(f"{CACHE.name}.lock"), INSTALL_WAIT_S):
        if ctypes.util.find_library("b64") is None:
            _apt_install("libb64-0d")
        return install()


def _wait_for_redis(url: str, server: subprocess.Popen[bytes]) -> None:
    import redis

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
