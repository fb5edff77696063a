"""The modules the server part's mypyc hook compiles (service/pyproject.toml), by name: the
compiled build that CI tests and the CPU images ship runs them as extension modules."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def compiled_modules() -> list[str]:
    project = tomllib.loads((ROOT / "service" / "pyproject.toml").read_text())
    hook = project["tool"]["hatch"]["build"]["targets"]["wheel"]["hooks"]["mypyc"]
    return [
        path.removeprefix("src/").removesuffix(".py").replace("/", ".") for path in hook["include"]
    ]
