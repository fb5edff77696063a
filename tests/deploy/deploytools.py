"""Helpers of the deployment tests: the repository's paths, running the offline validators,
and talking to a running server the way the deploy files do (health check, /metrics)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEALTHCHECK = ROOT / "deploy" / "healthcheck.py"


@dataclass(frozen=True)
class Completed:
    code: int
    output: str


def run(*command: str | Path, cwd: Path = ROOT, env: dict[str, str] | None = None) -> Completed:
    """Run a validator; return its exit status and combined output for the assertion message."""
    result = subprocess.run(
        [str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    return Completed(result.returncode, result.stdout + result.stderr)


def venv_tool(name: str) -> Path:
    """A console script installed next to the running interpreter (the dev extra's tools)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.fail(f"{name} is missing: install the dev extra (pip install -e '.[dev]')")
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class RunningServer:
    grpc_target: str
    metrics_url: str

    def scrape(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            return response.read().decode()


def healthcheck(target: str, env: dict[str, str] | None = None) -> Completed:
    """The image's HEALTHCHECK command, run against `target` (with `env` added to the
    environment)."""
    return run(sys.executable, HEALTHCHECK, target, env={**os.environ, **(env or {})})
