"""`rnnserve infer`: one request from the command line, one clear line on failure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def rnnserve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rnnserve", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_infer_values_prints_the_sine_output(server) -> None:
    done = rnnserve("infer", "sine-lstm", "--values", "0,0.1,0.2", "--url", server.address)

    assert done.returncode == 0, done.stderr
    assert len([float(v) for v in done.stdout.strip().split(",")]) == 3


def test_infer_text_prints_the_tagged_text(server) -> None:
    done = rnnserve("infer", "tagger-gru", "--text", "hello", "--url", server.address)

    assert done.returncode == 0, done.stderr
    assert done.stdout == "ohlol\n"


def test_a_server_error_is_one_line_and_a_failure_status(server) -> None:
    done = rnnserve("infer", "tagger-gru", "--text", "he\u2603", "--url", server.address)

    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "INVALID_ARGUMENT" in done.stderr and "'\u2603'" in done.stderr


def test_an_unreachable_server_is_one_line_and_a_failure_status() -> None:
    done = rnnserve("infer", "sine-gru", "--values", "1", "--url", "127.0.0.1:1", "--timeout", "5")

    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "UNAVAILABLE" in done.stderr
