"""What the parallel runs of scripts/test.sh (pytest-xdist, --dist loadgroup) rely on: the
tests of one xdist_group run on one worker. The Docker stack's tests are one group
(tests/deploy/test_stack.py): split over workers, each worker would build and start a stack
of its own, in turn."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

GROUPED = """
import pytest


@pytest.mark.xdist_group("together")
@pytest.mark.parametrize("index", range(6))
def test_grouped(index):
    pass
"""


def test_the_tests_of_an_xdist_group_run_on_one_worker(tmp_path: Path) -> None:
    (tmp_path / "test_grouped.py").write_text(GROUPED)

    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider",
         "--numprocesses", "2", "--dist", "loadgroup", "test_grouped.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert done.returncode == 0, done.stdout + done.stderr
    workers = re.findall(r"^\[(gw\d+)\] .*PASSED test_grouped\.py", done.stdout, flags=re.M)
    assert len(workers) == 6 and len(set(workers)) == 1, done.stdout
