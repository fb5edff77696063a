"""`rnnserve serve` settings: flags override RNNSERVE_* variables, which override defaults."""

from __future__ import annotations

import argparse
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


def test_a_missing_repository_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rnnserve", "serve", "--model-repository", str(tmp_path / "no")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "--model-repository" in done.stderr


def test_the_server_never_imports_torch() -> None:
    code = (
        "import sys, rnnserve.service.cli, rnnserve.service.server, rnnserve.client.client\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 0, done.stderr
