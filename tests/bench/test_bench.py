"""`rnnserve bench --quick` runs every scenario briefly, so none rots: each writes its JSON
with the environment and medians, the markdown page and its plot."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rnnserve.bench.cli import SCENARIOS
from rnnserve.cli import main

ENVIRONMENT_KEYS = {"machine", "python", "versions", "runs", "date"}
pytestmark = pytest.mark.slow  # each scenario starts its servers and loads them for seconds


# The GPU scenario's quick run is scripts/gpu-check.sh's dry run: tests/test_gpu_check.py.
@pytest.mark.parametrize("scenario", [name for name in SCENARIOS if name != "gpu"])
def test_each_scenario_writes_its_figures(
    scenario: str, tiny_repository: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if scenario == "perf_analyzer":
        request.getfixturevalue("perf_analyzer")  # installed, with the libraries it needs
    out = tmp_path / "benchmarks"
    code = main(
        [
            "bench",
            "--quick",
            "--only",
            scenario,
            "--out",
            str(out),
            "--model-repository",
            str(tiny_repository),
        ]
    )

    assert code == 0
    result = json.loads((out / f"{scenario}.json").read_text())
    assert set(result["environment"]) >= ENVIRONMENT_KEYS
    assert result["environment"]["runs"] == 1
    assert result["figures"]
    for figure in result["figures"]:
        assert figure["runs"] and figure["median"]
        assert figure["median"].get("errors", 0) == 0
        assert figure["median"].get("failed_rows", 0) == 0
    assert (out / f"{scenario}.png").exists() or (out / f"{scenario}.svg").exists()
    page = (out / "README.md").read_text()
    assert result["title"] in page and "## Goals" in page


def test_load_generator_reports_its_own_cpu(tmp_path: Path) -> None:
    from rnnserve.bench import loadgen, servers
    from rnnserve.bench.payloads import step_request_json

    with servers.echo_server(tmp_path) as echo:
        figures = loadgen.run(
            loadgen.Load(
                echo.target,
                step_request_json("sine-lstm"),
                vus=2,
                duration_s=1,
                warmup_s=0,
                server_pid=echo.pid,
            )
        )

    assert figures["requests"] > 0 and figures["errors"] == 0
    assert figures["k6_cpu_cores"] > 0 and figures["server_cpu_cores"] > 0
    assert 0 < figures["p50_ms"] <= figures["p99_ms"]


def test_profile_says_where_the_servers_time_goes(tiny_repository: Path, tmp_path: Path) -> None:
    out = tmp_path / "benchmarks"
    argv = ["bench", "--quick", "--profile", "--out", str(out)]
    code = main([*argv, "--model-repository", str(tiny_repository)])

    assert code == 0
    page = (out / "profile.md").read_text()
    assert page.count("\n## ") == 3  # one step per ModelInfer, streams, multi-session
    assert page.count("The echo floor: ") == 2  # beside the one-step loads
    # Every request runs through the interpreter, compiled build or not, and through grpc.
    assert re.search(r"\| Python \| [\d,.]+ \| [\d,.]+ \|", page), page
    assert re.search(r"\| grpc \| [\d,.]+ \| [\d,.]+ \|", page), page
    assert "session-steps/s" in page


def test_profile_counts_samples_by_part_and_by_function() -> None:
    from rnnserve.bench.profile import OTHER, fold

    report = (
        "# Samples: 6  of event 'cpu-clock'\n"
        "#\n"
        " 3          \tlibpython3.11.so.1.0\t[.] _PyEval_EvalFrameDefault\n"
        " 1          \t[kernel.kallsyms]   \t[k] finish_task_switch.isra.0\n"
        " 1          \tcompiled__mypyc.cpython-311-x86_64-linux-gnu.so\t[.] CPyDef_join\n"
        " 1          \tlibz.so.1           \t[.] inflate\n"
    )
    total, parts, symbols = fold(report)

    assert total == 6
    assert parts == {"Python": 3, "kernel": 1, "rnnserve, compiled": 1, OTHER: 1}
    assert symbols[("_PyEval_EvalFrameDefault", "Python")] == 3
    assert symbols[("finish_task_switch.isra.0", "kernel")] == 1
