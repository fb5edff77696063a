"""The README's client section runs as written: each of its Python blocks, against the
shared server (its addresses put in for localhost's), prints what its comments say where
the tiny models can say it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def client_blocks() -> list[str]:
    """The ```python blocks between `## Clients` and the next section."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Clients\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```python\n(.*?)^```$", section, flags=re.DOTALL | re.MULTILINE)


BLOCKS = client_blocks()
EXPECTED = {  # block -> lines of its output, in order
    "basics": ["(1, 3, 1)", "ohlol", "['ohlol', 'ohlo'] (2, 5)", "{'h0': 'hn'} ['text_out']"],
    "sequences": ["20 (1, 20, 1)", "40 (1, 20, 1)", "60 (1, 20, 1)", "0", "ohlol"],
    "asyncio": ["ohlol"],
    "errors": [
        "DEADLINE_EXCEEDED",
        "NotFound unknown model 'sine-xyz'",
        "InvalidArgument input 'x'",
    ],
}


def test_the_section_has_the_blocks_these_tests_expect() -> None:
    assert len(BLOCKS) == len(EXPECTED)


@pytest.mark.parametrize(
    ("block", "expected"), list(zip(BLOCKS, EXPECTED.values(), strict=False)), ids=EXPECTED
)  # a block more or less fails the test above
def test_a_readme_client_block_runs_and_prints_what_it_says(
    server, block: str, expected: list[str]
) -> None:
    code = block.replace("localhost:8001", server.address)

    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )

    assert done.returncode == 0, done.stderr
    lines = iter(done.stdout.splitlines())
    for line in expected:  # each in order, among the others
        assert any(printed.startswith(line) for printed in lines), (line, done.stdout)
