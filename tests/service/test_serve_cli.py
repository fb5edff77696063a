"""`rnnserve serve` settings: flags override RNNSERVE_* variables, which override defaults."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from rnnserve.cli import build_parser, main
from rnnserve.protocol.errors import UsageError
from rnnserve.service.cli import BOOL_FLAGS, LIST_FLAGS, VALUE_FLAGS, settings_from_args
from rnnserve.service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def parse(*flags: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *flags])


def test_every_setting_has_a_flag_and_a_description() -> None:
    flagged = VALUE_FLAGS + LIST_FLAGS + BOOL_FLAGS

    assert sorted(flagged) == sorted(Settings.model_fields)
    assert [name for name, info in Settings.model_fields.items() if not info.description] == []


def test_help_is_each_settings_description_with_flags_and_defaults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse("--help")

    assert exited.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())  # unwrapped
    limit = Settings.model_fields["worker_restart_limit"].description
    assert limit is not None and "`worker_restart_window_s`" in limit
    # Another field is named as its flag; the default comes from Settings.
    assert limit.replace("`worker_restart_window_s`", "--worker-restart-window-s") in help_text
    assert "--grpc-port GRPC_PORT gRPC port (default: 8001)" in help_text
    assert "--tls-key TLS_KEY PEM private key of --tls-cert --tls-client-ca" in help_text
    assert "in preference, comma-separated (default: CUDAExecutionProvider,CPU" in help_text
    reflection = Settings.model_fields["reflection"].description
    assert f"--reflection, --no-reflection {reflection} (default: on)" in help_text


def test_building_the_parser_imports_no_settings() -> None:
    """Every `rnnserve` command builds the whole parser: pydantic waits for `serve`."""
    code = (
        "import sys\n"
        "from rnnserve.cli import build_parser\n"
        "build_parser().parse_args(['serve', '--grpc-port', '1'])\n"
        "assert 'pydantic' not in sys.modules, 'pydantic was imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 0, done.stderr


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


@pytest.mark.parametrize("listeners", ["1", "16"])
def test_a_second_server_on_a_running_servers_port_does_not_start(server, listeners) -> None:
    """gRPC would share the port (SO_REUSEPORT) and split the first server's traffic: the
    running server's many listeners share it, and a second server of one or many does not
    join them."""
    done = serve(
        "--model-repository", ".", "--grpc-port", str(server.grpc_port), "--metrics-port", "0",
        "--grpc-listeners", listeners,
    )  # fmt: skip

    assert_one_line(done, f"--grpc-port {server.grpc_port}: cannot listen")


def test_a_server_of_many_listeners_does_not_join_a_lone_listeners_port(
    start_server, tiny_repository
) -> None:
    lone = start_server(tiny_repository, args=["--grpc-listeners", "1"])

    done = serve(
        "--model-repository", ".", "--grpc-port", str(lone.grpc_port), "--metrics-port", "0",
        "--grpc-listeners", "16",
    )  # fmt: skip

    assert_one_line(done, f"--grpc-port {lone.grpc_port}: cannot listen")


def test_the_start_up_line_names_the_servers_version(server) -> None:
    """One line tells which release answers, beside what loaded: the version every part of
    rnnserve shares (tests/test_parts.py)."""
    version = tomllib.loads((ROOT / "service" / "pyproject.toml").read_text())["project"]

    assert f"rnnserve {version['version']} ready: 9 models loaded, 0 failed" in server.log()


def test_the_server_never_imports_torch() -> None:
    code = (
        "import sys, rnnserve.service.cli, rnnserve.service.server, rnnserve.client.client\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 0, done.stderr


def _sha(token: str) -> str:
    import hashlib

    return hashlib.sha256(token.encode()).hexdigest()


TOKEN_FILES = {  # a malformed token file -> the problem named
    "two fields": (f"alice {_sha('a')}\n", "line 1: expected 3 or 4 fields (name, SHA-256"),
    "not hex": ("alice xyz infer\n", "line 1: sha256: the SHA-256 must be 64 hex digits"),
    "unknown role": (f"alice {_sha('a')} infer,root\n", "line 1: roles: unknown role 'root'"),
    "repeated name": (
        f"# ops\nalice {_sha('a')} infer\nalice {_sha('b')} admin\n",
        "line 3: principal 'alice' repeated",
    ),
    "shared token": (
        f"alice {_sha('a')} infer\nbob {_sha('a')} infer\n",
        "line 2: 'bob' has the token of 'alice'",
    ),
    "empty": ("# nobody\n", "names no principal"),
    "no date": (f"alice {_sha('a')} infer soon\n", "line 1: expires: 'soon' is not an ISO 8601"),
}


@pytest.mark.parametrize("case", TOKEN_FILES)
def test_a_malformed_token_file_stops_the_server_naming_the_file_and_line(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, problem = TOKEN_FILES[case]
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(text)

    code = main(["serve", "--model-repository", str(tmp_path), "--auth-tokens", str(tokens)])

    assert code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert f"rnnserve serve: --auth-tokens {tokens}: {problem}" in error


def test_tls_files_that_cannot_serve_stop_the_server_with_one_line(
    tmp_path: Path, pki, capsys: pytest.CaptureFixture[str]
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a PEM file\n")
    cert, key = str(pki.server.cert), str(pki.server.key)
    cases = [
        (["--tls-cert", str(garbage), "--tls-key", key], f"--tls-cert {garbage}: holds no PEM"),
        (["--tls-cert", cert, "--tls-key", str(garbage)], f"--tls-key {garbage}: holds no PEM"),
        (["--tls-cert", cert, "--tls-key", str(pki.alice.key)],
         f"--tls-key {pki.alice.key}: is not the key of the certificate in {cert}"),
        (["--tls-cert", cert, "--tls-key", str(tmp_path / "none.key")],
         f"--tls-key {tmp_path / 'none.key'}: cannot be read: No such file or directory"),
        (["--tls-cert", cert], "--tls-cert needs --tls-key"),
        (["--tls-client-ca", str(pki.ca)], f"--tls-client-ca {pki.ca}: needs --tls-cert"),
        (["--tls-cert", cert, "--tls-key", key, "--tls-client-ca", str(garbage)],
         f"--tls-client-ca {garbage}: holds no PEM certificate"),
    ]  # fmt: skip
    for flags, problem in cases:
        assert main(["serve", "--model-repository", str(tmp_path), *flags]) == 2, flags
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and problem in error, (flags, error)


def test_a_bad_token_file_exits_2_before_any_worker_starts(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("alice 1234 infer\n")
    done = subprocess.run(
        [sys.executable, "-m", "rnnserve", "serve", "--model-repository", str(tmp_path),
         "--workers", "2", "--state-store", "owned", "--auth-tokens", str(tokens)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert f"--auth-tokens {tokens}: line 1: sha256" in done.stderr
