"""The token file changes under a running server (service/auth.py): a principal removed is
refused within seconds over gRPC and REST, without a restart; SIGHUP reads the file at once,
even a change its size and modification time do not show, and with workers the supervisor
passes it on to each."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from polling import eventually
from processes import worker_pids
from security_helpers import TOKENS, write_tokens

from rnnserve.client.client import RnnClient
from rnnserve.client.errors import Unauthenticated

X = np.zeros((1, 2, 1), np.float32)
RELOAD_TIMEOUT_S = 10.0  # the file is polled every second


def grpc_code(server, principal: str) -> str:
    with RnnClient(server.address, token=TOKENS[principal][0]) as client:
        try:
            client.infer("sine-lstm", {"x": X})
        except Unauthenticated:
            return "UNAUTHENTICATED"
    return "OK"


def rest_status(server, principal: str) -> int:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2, 1], "data": [0, 0]}]}
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        connection.request(
            "POST", "/v2/models/sine-lstm/infer", json.dumps(body),
            {"Authorization": f"Bearer {TOKENS[principal][0]}"},
        )  # fmt: skip
        return connection.getresponse().status
    finally:
        connection.close()


def without(path: Path, principal: str) -> None:
    """The token file, rewritten in place without the principal's line."""
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(line for line in lines if not line.startswith(principal)))


@pytest.fixture
def tokens(tmp_path: Path) -> Path:
    return write_tokens(tmp_path / "tokens.txt")


def test_a_removed_principal_is_refused_within_seconds(
    start_server, sine_repository, tokens: Path
) -> None:
    server = start_server(sine_repository, args=["--auth-tokens", str(tokens)])
    assert grpc_code(server, "mallory") == "OK" and rest_status(server, "mallory") == 200

    without(tokens, "mallory")

    eventually(lambda: grpc_code(server, "mallory") == "UNAUTHENTICATED",
               "mallory refused over gRPC", RELOAD_TIMEOUT_S)  # fmt: skip
    assert rest_status(server, "mallory") == 401
    assert grpc_code(server, "alice") == "OK" and rest_status(server, "alice") == 200
    assert "read 2 principals from --auth-tokens" in server.log()


def test_sighup_reads_the_file_at_once(start_server, sine_repository, tokens: Path) -> None:
    server = start_server(sine_repository, args=["--auth-tokens", str(tokens)])
    assert grpc_code(server, "mallory") == "OK"
    before = os.stat(tokens)
    # Mallory's token replaced by another of the same length, the file's size and time kept:
    # nothing the poll looks at changes.
    old = hashlib.sha256(TOKENS["mallory"][0].encode()).hexdigest()
    new = hashlib.sha256(b"another token").hexdigest()
    tokens.write_text(tokens.read_text().replace(old, new))
    os.utime(tokens, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert grpc_code(server, "mallory") == "OK"  # unseen

    server.process.send_signal(signal.SIGHUP)

    eventually(lambda: "read 3 principals" in server.log(), "the file read again on SIGHUP")
    assert grpc_code(server, "mallory") == "UNAUTHENTICATED"
    assert rest_status(server, "mallory") == 401
    assert server.process.poll() is None  # SIGHUP does not stop it


def test_a_broken_file_keeps_the_tokens_in_force(
    start_server, sine_repository, tokens: Path
) -> None:
    server = start_server(sine_repository, args=["--auth-tokens", str(tokens)])

    replacement = tokens.with_suffix(".new")  # replaced whole, as editors save: a new inode
    replacement.write_text(tokens.read_text() + "eve 1234 infer\n")
    replacement.replace(tokens)

    eventually(lambda: "tokens read before stay in force" in server.log(),
               "the broken file reported", RELOAD_TIMEOUT_S)  # fmt: skip
    assert grpc_code(server, "mallory") == "OK" and rest_status(server, "alice") == 200
    [error] = [line for line in server.log().splitlines() if "stay in force" in line]
    assert "line 5: sha256: the SHA-256 must be 64 hex digits, got 4 characters" in error


def test_the_supervisor_passes_sighup_to_every_worker(
    start_server, sine_repository, tokens: Path, redis_url: str
) -> None:
    server = start_server(sine_repository, args=[
        "--auth-tokens", str(tokens), "--workers", "2", "--state-store", "owned",
        "--redis-url", redis_url,
    ])  # fmt: skip
    pids = worker_pids(server.process.pid)

    server.process.send_signal(signal.SIGHUP)

    eventually(lambda: server.log().count("read 3 principals") == 2, "both workers read it")
    assert server.process.poll() is None and worker_pids(server.process.pid) == pids
    assert grpc_code(server, "alice") == "OK"
