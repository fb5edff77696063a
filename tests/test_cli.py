"""`rnnserve`, the command line itself: what it says of the installed release."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_version_names_every_part_at_the_one_version() -> None:
    """Every distribution of the repository (each folder's pyproject.toml, all installed
    here), the command line's own first."""
    projects = [ROOT / "pyproject.toml", *sorted(ROOT.glob("*/pyproject.toml"))]
    parts = [tomllib.loads(path.read_text())["project"] for path in projects]

    done = subprocess.run(
        [sys.executable, "-m", "rnnserve", "--version"], capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"rnnserve {parts[0]['version']}"
    assert sorted(lines) == sorted(f"{part['name']} {part['version']}" for part in parts)
