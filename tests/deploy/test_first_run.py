"""The first run: the README opens with the two commands, the scripts behind them are sound,
CI runs the same test command, and `rnnserve demo` drives a real server end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from deploytools import ROOT, run

SCRIPTS = [ROOT / "scripts" / name for name in ("bootstrap.sh", "demo.sh", "test.sh")]


def test_readme_opens_with_its_title_then_the_two_commands() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert lines[:3] == ["# rnnserve", "", "```bash"]
    assert [line.split("#")[0].strip() for line in lines[3:5]] == [
        "./scripts/demo.sh",
        "./scripts/test.sh",
    ]
    assert lines[5] == "```"


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(path: Path) -> None:
    result = run("bash", "-n", path)
    assert result.code == 0, result.output


@pytest.mark.parametrize("name", ["demo.sh", "test.sh"])
def test_commands_are_executable_and_strict(name: str) -> None:
    path = ROOT / "scripts" / name
    assert os.access(path, os.X_OK)
    assert "set -euo pipefail" in path.read_text()


def test_ci_runs_the_readme_test_command() -> None:
    ci = ROOT / ".ci" / "run"
    assert os.access(ci, os.X_OK)
    assert "exec ./scripts/test.sh" in ci.read_text()


def test_install_is_skipped_once_done() -> None:
    """Once .venv is installed and nothing it depends on changed, bootstrap does nothing."""
    result = subprocess.run(
        ["bash", "-c", "source scripts/bootstrap.sh"], cwd=ROOT, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    first = result.stdout
    again = subprocess.run(
        ["bash", "-c", "source scripts/bootstrap.sh"], cwd=ROOT, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert again.returncode == 0 and again.stdout == "", (first, again.stdout)


def test_demo_drives_the_server_and_stops_it_cleanly(tiny_repository: Path) -> None:
    """Its lines and the server's log, through one pipe, read in the order things happened:
    the server ready, its addresses while it answers, the lessons, then stopped."""
    result = subprocess.run(
        [sys.executable, "-m", "rnnserve", "demo", "--model-repository", str(tiny_repository)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout
    out = result.stdout
    assert "building" not in out  # every default model was already there
    assert "sin(t) streamed in chunks" in out and "cos(t)" in out
    assert "tagger-gru: 'hello' -> 'ohlol'" in out
    assert "seq2seq-gru: written dates to ISO dates" in out
    in_order = [
        "rnnserve.service.server: rnnserve ",  # the server's start-up line, its version
        "the server answers until the demo stops it:",
        "  REST     curl http://127.0.0.1:",
        "sin(t) streamed in chunks",
        "stopping the server (SIGTERM)",
        "rnnserve.service.server: stopped",
    ]
    assert [out.index(line) for line in in_order] == sorted(out.index(line) for line in in_order)
    assert out.rstrip().endswith("server stopped cleanly (SIGTERM, exit 0)")
