"""The installed package: one top-level name, `rnnserve`, holding every part."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_installs_one_top_level_package(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), ROOT],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("rnnserve-*.whl")

    names = zipfile.ZipFile(wheel).namelist()

    assert {name.split("/")[0] for name in names} == {"rnnserve", f"{_dist_info(wheel)}"}
    for part in ("service", "export", "client", "bench", "protocol"):
        assert f"rnnserve/{part}/__init__.py" in names
    assert "rnnserve/protocol/inference.protoset" in names
    assert not [name for name in names if "__pycache__" in name]


def _dist_info(wheel: Path) -> str:
    name, version = wheel.name.split("-")[:2]
    return f"{name}-{version}.dist-info"
