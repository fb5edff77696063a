"""The client stands alone: installed alone it brings the protocol and nothing of the
server (its imports are the import contract's, pyproject.toml), and it lives in one process
with tritonclient, whose copies of the same .proto files would clash with protobuf's
default descriptor pool."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


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


SEQUENCE = """
import sys
import numpy as np
from rnnserve.client.client import RnnClient
from rnnserve.client.sequence import SequenceSession

x = np.sin(np.linspace(0, 3, 12, dtype=np.float32)).reshape(1, 12, 1)
with RnnClient(sys.argv[1]) as client:
    whole = client.infer("sine-lstm", {"x": x}, ["y"])["y"]
    with SequenceSession(client, "sine-lstm", sequence_id=77) as session:
        pieces = [session.step({"x": x[:, i : i + 4]}, ["y"])["y"] for i in (0, 4, 8)]
assert np.allclose(np.concatenate(pieces, axis=1), whole, atol=1e-5)
print("sequence equals whole")
"""
SERVER_SIDE = ["onnxruntime", "starlette", "uvicorn", "redis", "torch", "pydantic-settings"]


@pytest.mark.slow
def test_the_client_installs_alone_and_steps_a_sequence(server, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    installed = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--constraint", ROOT / "requirements.lock",
         ROOT / "protos", ROOT / "client"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format", "json"], capture_output=True, text=True
    )
    names = {package["name"].lower() for package in json.loads(listed.stdout)}

    ran = subprocess.run(
        [python, "-c", SEQUENCE, server.address], capture_output=True, text=True, timeout=120,
        cwd=tmp_path,
    )  # fmt: skip

    assert {"rnnserve-client", "rnnserve-protocol", "grpcio", "numpy"} <= names
    assert not names & {*SERVER_SIDE, "rnnserve-server", "rnnserve-model"}, names
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "sequence equals whole"
