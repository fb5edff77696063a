"""The distributions: each top-level folder of code is a part that builds and installs
alone, under the one namespace `rnnserve` that no part owns (PEP 420: no
rnnserve/__init__.py), all at one version."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# folder -> (distribution, the subpackage of `rnnserve` it holds; None: modules of its own)
PARTS = {
    "protos": ("rnnserve-protocol", "protocol"),
    "model": ("rnnserve-model", "model"),
    "client": ("rnnserve-client", "client"),
    "service": ("rnnserve-server", "service"),
    "export": ("rnnserve-export", "export"),
    "bench": ("rnnserve-bench", "bench"),
    ".": ("rnnserve", None),
}


def _project(folder: str) -> dict:
    return tomllib.loads((ROOT / folder / "pyproject.toml").read_text())["project"]


def test_every_part_is_a_distribution_of_the_one_version() -> None:
    names = {folder: _project(folder)["name"] for folder in PARTS}
    versions = {_project(folder)["version"] for folder in PARTS}

    assert names == {folder: name for folder, (name, _) in PARTS.items()}
    assert len(versions) == 1


def test_parts_require_each_other_at_that_version_and_others_by_range() -> None:
    version = _project(".")["version"]
    for folder in PARTS:
        project = _project(folder)
        requirements = [*project["dependencies"]]
        requirements += [
            r for extra in project.get("optional-dependencies", {}).values() for r in extra
        ]
        for requirement in requirements:
            if requirement.startswith("rnnserve"):
                assert requirement.endswith(f"=={version}"), (folder, requirement)
            else:
                assert "==" not in requirement, (folder, requirement)  # the lock pins


@pytest.mark.slow
@pytest.mark.parametrize("folder", list(PARTS), ids=lambda folder: PARTS[folder][0])
def test_each_part_builds_a_wheel_of_its_own_subpackage(folder: str, tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path),
         ROOT / folder],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("*.whl")

    names = zipfile.ZipFile(wheel).namelist()
    code = [name for name in names if ".dist-info/" not in name]

    assert code and all(name.startswith("rnnserve/") for name in code)
    assert "rnnserve/__init__.py" not in names
    assert not [name for name in names if "__pycache__" in name]
    subpackage = PARTS[folder][1]
    if subpackage is None:  # the command line's own modules
        assert {name.split("/")[1] for name in code} == {"__main__.py", "cli.py", "demo.py"}
    else:
        assert {name.split("/")[1] for name in code} == {subpackage}
    if subpackage == "protocol":
        assert "rnnserve/protocol/inference.protoset" in names
