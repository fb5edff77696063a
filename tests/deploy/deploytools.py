"""Helpers of the deployment tests: the repository's paths, running the offline validators,
talking to a running server the way the deploy files do (health check, /metrics), and the
metric names PromQL in the deploy files may use."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
HEALTHCHECK = ROOT / "deploy" / "healthcheck.py"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "rnnserve.json"


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


def expressions(dashboard: dict) -> list[str]:
    """Every PromQL expression: panel targets and template variable queries."""
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


METRIC_NAME = re.compile(r"\brnnserve_[a-zA-Z0-9_]+\b")
# Series names Prometheus stores for each family type, beyond samples seen in one scrape
# (a labelled family shows samples only after its first use). No `_created`: the server
# exports none.
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("", "_count", "_sum"),
    "gauge": ("",),
}


def exported_names(scrape: str) -> set[str]:
    """Every series name a scrape's families give Prometheus."""
    names: set[str] = set()
    for family in text_string_to_metric_families(scrape):
        names |= {sample.name for sample in family.samples}
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
    return names


def unknown_names(expressions: Iterable[str], exported: set[str]) -> set[str]:
    """The rnnserve_* names PromQL expressions use that the server does not export."""
    return {name for expr in expressions for name in METRIC_NAME.findall(expr)} - exported
