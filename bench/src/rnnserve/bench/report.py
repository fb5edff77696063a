"""What every benchmark shares: the environment it ran in, medians over runs, and the
files it leaves in the output folder (one JSON per scenario, one markdown page over all
of them, one PNG per scenario).

A scenario's JSON holds `figures`: each figure is one measured point, with the parameters
that define it, the metrics of every run and their medians. The markdown page is rebuilt
from every scenario JSON in the folder, so `--only` refreshes one scenario and keeps the
others' figures.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

Metrics = dict[str, float]

# uvloop: the event loop of rnnserve and its floors where installed (service/event_loop.py).
PACKAGES = (
    "onnxruntime", "onnxruntime-gpu", "grpcio", "protobuf", "numpy", "uvloop", "torch", "k6"
)  # fmt: skip


@dataclass
class Figure:
    """One measured point: its parameters, the metrics of each run, their medians."""

    label: str
    params: dict[str, Any]
    runs: list[Metrics]
    median: Metrics = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.median:
            self.median = medians(self.runs)


@dataclass
class ScenarioResult:
    name: str
    title: str
    # What the figures mean and how they were produced, printed above the table.
    description: str
    figures: list[Figure]
    notes: list[str] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    command: str = ""


def medians(runs: list[Metrics]) -> Metrics:
    """Per-metric median over runs (metrics missing from a run are left out of it)."""
    names = {name for run in runs for name in run}
    return {
        name: statistics.median(run[name] for run in runs if name in run) for name in sorted(names)
    }


def quantiles_ms(samples_ns: list[int]) -> Metrics:
    """p50/p90/p99 in milliseconds of latency samples in nanoseconds."""
    ordered = sorted(samples_ns)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6

    return {"p50_ms": at(0.50), "p90_ms": at(0.90), "p99_ms": at(0.99)}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def gpu_model() -> str:
    """The first NVIDIA GPU's name, or "" where there is none."""
    try:
        found = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return found.stdout.strip().splitlines()[0] if found.stdout.strip() else ""


DATE = "%Y-%m-%dT%H:%M:%S%z"  # a scenario's `date`
# Which `rnnserve bench` process measured a scenario: a goal's ratio is of one run only
# when its figure and its floor share it (bench/goals.py).
INVOCATION = f"{time.strftime(DATE)} pid {os.getpid()}"


def environment(runs: int) -> dict[str, Any]:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return {
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "memory_gib": round(
                os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1
            ),
            "gpu": gpu_model(),
            "system": f"{platform.system()} {platform.release()}",
        },
        "python": platform.python_version(),
        "versions": versions,
        "runs": runs,
        "date": time.strftime(DATE),
        "invocation": INVOCATION,
    }


def write_scenario(out: Path, result: ScenarioResult) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{result.name}.json"
    path.write_text(json.dumps(asdict(result), indent=2) + "\n")
    return path


def read_scenarios(out: Path) -> list[ScenarioResult]:
    results = []
    for path in sorted(out.glob("*.json")):
        data = json.loads(path.read_text())
        figures = [Figure(**figure) for figure in data.pop("figures")]
        results.append(ScenarioResult(figures=figures, **data))
    return sorted(results, key=lambda result: int(result.title.split(".", 1)[0]))  # by number


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e3 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _table(figures: list[Figure]) -> list[str]:
    params = list(dict.fromkeys(name for figure in figures for name in figure.params))
    metric_names = list(dict.fromkeys(name for figure in figures for name in figure.median))
    header = ["figure", *params, *metric_names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for figure in figures:
        row = [figure.label]
        row += [_cell(figure.params.get(name, "")) for name in params]
        row += [
            _cell(figure.median[name]) if name in figure.median else "" for name in metric_names
        ]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _environment_line(env: dict[str, Any]) -> str:
    machine = env.get("machine", {})
    versions = ", ".join(f"{name} {version}" for name, version in env.get("versions", {}).items())
    gpu = f", GPU {machine['gpu']}" if machine.get("gpu") else ""
    return (
        f"Machine: {machine.get('cpu')} ({machine.get('cores')} cores, "
        f"{machine.get('memory_gib')} GiB{gpu}); Python {env.get('python')}; {versions}. "
        f"Runs: {env.get('runs')} (medians shown). Measured {env.get('date')}."
    )


def render_markdown(out: Path, results: list[ScenarioResult], goals: list[str]) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Written by `rnnserve bench`; every figure is the median over the runs named beside it.",
        "Latencies are round trips seen by the load generator; `*_cpu_cores` columns are the",
        "CPU time of a process divided by the wall time of the measurement (1.0 = one core busy).",
        "",
    ]
    if goals:
        lines += ["## Goals", "", *[f"- {goal}" for goal in goals], ""]
    for result in results:
        lines += [f"## {result.title}", "", result.description, ""]
        lines += [_environment_line(result.environment), ""]
        if result.command:
            lines += [f"Command: `{result.command}`", ""]
        lines += [*_table(result.figures), ""]
        for plot in (f"{result.name}.png", f"{result.name}.svg"):
            if (out / plot).exists():
                lines += [f"![{result.title}]({plot})", ""]
        lines += [f"- {note}" for note in result.notes]
        if result.notes:
            lines.append("")
    return "\n".join(lines)
