"""The README's client section runs as written: each of its Python blocks, against the
shared server (its addresses put in for localhost's), prints what its comments say where
the tiny models can say it; and each block but the streaming one runs again over REST, its
gRPC client swapped for the REST one."""

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
    "streaming": [],  # the tiny models' dates are anyone's guess
    "asyncio": ["ohlol"],
    "errors": [
        "DEADLINE_EXCEEDED",
        "NotFound unknown model 'sine-xyz'",
        "InvalidArgument input 'x'",
    ],
}
GRPC_ONLY = {"streaming"}
GRPC_CLIENT = 'RnnClient("localhost:8001"'  # AsyncRnnClient(... too
REST_CLIENT = 'RestClient("http://localhost:8000"'
REST_IMPORTS = (
    "from rnnserve.client.aio import AsyncRestClient\nfrom rnnserve.client.rest import RestClient\n"
)
RUNS = [
    pytest.param(block, expected, protocol, id=f"{name}-{protocol}")
    for block, (name, expected) in zip(BLOCKS, EXPECTED.items(), strict=False)
    for protocol in ("grpc", "rest")
    if protocol == "grpc" or name not in GRPC_ONLY
]  # a block more or less fails the test below


def test_the_section_has_the_blocks_these_tests_expect() -> None:
    assert len(BLOCKS) == len(EXPECTED)
    assert all(GRPC_CLIENT in block for block in BLOCKS)


@pytest.mark.parametrize(("block", "expected", "protocol"), RUNS)
def test_a_readme_client_block_runs_and_prints_what_it_says(
    server, block: str, expected: list[str], protocol: str
) -> None:
    if protocol == "rest":
        block = REST_IMPORTS + block.replace(GRPC_CLIENT, REST_CLIENT)
    code = block.replace("http://localhost:8000", server.http_url).replace(
        "localhost:8001", server.address
    )

    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )

    assert done.returncode == 0, done.stderr
    lines = iter(done.stdout.splitlines())
    for line in expected:  # each in order, among the others
        assert any(printed.startswith(line) for printed in lines), (line, done.stdout)
