"""`rnnserve serve` settings: flags override RNNSERVE_* variables, which override defaults."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from rnnserve.cli import build_parser
from rnnserve.errors import UsageError
from rnnserve.service.cli import BOOL_FLAGS, LIST_FLAGS, VALUE_FLAGS, settings_from_args
from rnnserve.service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def parse(*flags: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *flags])


def test_every_setting_has_a_flag() -> None:
    flagged = {field for field, _ in VALUE_FLAGS + LIST_FLAGS + BOOL_FLAGS}

    assert flagged == set(Settings.model_fields)


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RNNSERVE_GRPC_PORT", "9001")
    monkeypatch.setenv("RNNSERVE_METRICS_PORT", "9002")

    settings = settings_from_args(
        parse("--grpc-port", "7001", "--providers", "CPUExecutionProvider", "--no-batching")
    )

    assert settings.grpc_port == 7001
    assert settings.metrics_port == 9002
    assert settings.providers == ["CPUExecutionProvider"]
    assert settings.batching is False


def test_rest_and_log_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RNNSERVE_LOG_FORMAT", "json")

    settings = settings_from_args(parse("--http-port", "0", "--access-log"))

    assert (settings.http_port, settings.log_format, settings.access_log) == (0, "json", True)
    assert Settings().http_port == 8000  # Triton's REST port
    with pytest.raises(UsageError, match="--log-format"):
        settings_from_args(parse("--log-format", "xml"))


def test_unset_flags_leave_the_defaults() -> None:
    assert settings_from_args(parse()) == Settings()


def test_an_invalid_value_names_its_flag() -> None:
    with pytest.raises(UsageError, match="--max-batch-size"):
        settings_from_args(parse("--max-batch-size", "0"))


def serve(*flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rnnserve", "serve", "--host", "127.0.0.1", *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def assert_one_line(done: subprocess.CompletedProcess[str], message: str) -> None:
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert message in done.stderr


def test_a_missing_repository_is_one_line_and_exit_2(tmp_path: Path) -> None:
    assert_one_line(serve("--model-repository", str(tmp_path / "no")), "--model-repository")


def unreadable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot list: mode 000, or for root (who lists anything) a
    folder of the kernel's that refuses it."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0)
        return locked
    kernel = Path("/proc/1/map_files")
    try:
        next(kernel.iterdir(), None)
    except PermissionError:
        return kernel
    pytest.skip("running as root where every folder can be listed")


def test_start_up_mistakes_are_one_line_and_exit_2(tiny_repository, tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = str(taken.getsockname()[1])
    repository = ["--model-repository", str(tiny_repository)]
    with taken:
        cases = [
            (serve(*repository, "--grpc-port", port), f"--grpc-port {port}: cannot listen"),
            (
                serve(*repository, "--grpc-port", "0", "--metrics-port", port),
                f"--metrics-port {port}: cannot listen",
            ),
            (
                serve(*repository, "--grpc-port", port, "--workers", "2", "--state-store", "redis"),
                f"--grpc-port {port}: cannot listen",
            ),
        ]
    cases += [
        (serve(*repository, "--log-level", "verbose"), "--log-level verbose: expected one of"),
        (serve(*repository, "--load-model", "sine-rnn"), "--load-model names the models"),
        (
            serve(*repository, "--model-control-mode", "explicit", "--load-model", "nope"),
            "--load-model: no folder nope",
        ),
        (
            serve(*repository, "--model-control-mode", "explicit", "--workers", "2"),
            "a load or unload request reaches one worker only",
        ),
    ]
    for done, message in cases:
        assert_one_line(done, message)


def test_an_unreadable_repository_is_one_line(tmp_path: Path) -> None:
    folder = unreadable_folder(tmp_path)

    assert_one_line(serve("--model-repository", str(folder)), f"cannot read {folder}")


def test_a_second_server_on_a_running_servers_port_does_not_start(server) -> None:
    """gRPC would share the port (SO_REUSEPORT) and split the first server's traffic."""
    done = serve(
        "--model-repository", ".", "--grpc-port", str(server.grpc_port), "--metrics-port", "0"
    )

    assert_one_line(done, f"--grpc-port {server.grpc_port}: cannot listen")


def test_the_server_never_imports_torch() -> None:
    code = (
        "import sys, rnnserve.service.cli, rnnserve.service.server, rnnserve.client.client\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 0, done.stderr
