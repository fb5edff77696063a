"""The client stands alone: it imports the shared protocol package and nothing of the
server, and it lives in one process with tritonclient, whose copies of the same .proto
files would clash with protobuf's default descriptor pool."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

CLIENT = Path(__file__).resolve().parents[2] / "client"
ALLOWED = ("rnnserve.client", "rnnserve.protocol", "rnnserve.errors")


def _rnnserve_imports(module: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.split(".")[0] == "rnnserve"}


@pytest.mark.parametrize(
    "module", sorted(CLIENT.rglob("*.py")), ids=lambda path: str(path.relative_to(CLIENT))
)
def test_client_modules_import_only_the_client_and_the_protocol(module: Path) -> None:
    imported = _rnnserve_imports(module)

    assert all(name.startswith(ALLOWED) for name in imported), imported


def test_importing_the_client_loads_no_server_module() -> None:
    script = (
        "import json, sys\n"
        "import rnnserve.client.client, rnnserve.client.sequence, rnnserve.client.cli\n"
        "import rnnserve.client.aio, rnnserve.client.rest\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)

    server_side = ("rnnserve.service", "rnnserve.export", "rnnserve.bench", "onnxruntime", "torch")
    assert not [name for name in loaded if name.startswith(server_side)]


BOTH_CLIENTS = """
import sys
import numpy as np
first, address = sys.argv[1:]
if first == "tritonclient":
    import tritonclient.grpc as triton
    from rnnserve.client.client import RnnClient
else:
    from rnnserve.client.client import RnnClient
    import tritonclient.grpc as triton

ours = RnnClient(address)
theirs = triton.InferenceServerClient(address)
x = np.linspace(0, 1, 6, dtype=np.float32).reshape(1, 6, 1)
tensor = triton.InferInput("x", [1, 6, 1], "FP32")
tensor.set_data_from_numpy(x)
y_theirs = theirs.infer("sine-gru", [tensor]).as_numpy("y")
y_ours = ours.infer("sine-gru", {"x": x}, ["y"])["y"]
assert np.array_equal(y_ours, y_theirs), (y_ours, y_theirs)
assert theirs.get_model_metadata("sine-gru").name == ours.model_metadata("sine-gru").name
print("both answered")
"""


@pytest.mark.parametrize("first", ["tritonclient", "rnnserve"])
def test_tritonclient_and_our_client_share_one_process(server, first: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", BOTH_CLIENTS, first, server.address],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "both answered"
