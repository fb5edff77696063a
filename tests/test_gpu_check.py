"""scripts/gpu-check.sh, the GPU proof in one call, on a machine without a GPU: it says so
in one line and exits 0 after its CPU dry run (the benchmark's harness, tiny durations)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from rnnserve.service.device import gpu_visible

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(gpu_visible(), reason="a GPU is here: the script runs its real proof")
def test_without_a_gpu_the_proof_says_so_and_dry_runs_on_the_cpu(tmp_path: Path) -> None:
    run = subprocess.run(
        [str(ROOT / "scripts" / "gpu-check.sh")],
        env={**os.environ, "WORK": str(tmp_path), "OUT": str(tmp_path / "out")},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )

    assert run.returncode == 0, run.stdout + run.stderr
    assert "no NVIDIA GPU here" in run.stdout
    result = json.loads((tmp_path / "out" / "bench" / "gpu.json").read_text())
    assert result["environment"]["runs"] == 1
    assert result["figures"] and all(f["runs"] and f["median"] for f in result["figures"])
    assert all(f["params"]["provider"] == "CPUExecutionProvider" for f in result["figures"])
