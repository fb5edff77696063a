"""`rnnserve import`: a user's own export into the repository in one command, its spec read
off the graph and written into it, checked as the server will load it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

from rnnserve.export.errors import VerificationError
from rnnserve.export.importer import import_graph
from rnnserve.model.spec import METADATA_KEY, ModelSpec
from rnnserve.protocol.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]


def stored_spec(graph: Path) -> ModelSpec:
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    return ModelSpec.from_json(session.get_modelmeta().custom_metadata_map[METADATA_KEY])


def test_one_command_imports_a_users_export(user_exports, tmp_path: Path) -> None:
    _, graph = user_exports["gru2"]

    done = subprocess.run(
        [sys.executable, "-m", "rnnserve", "import", str(graph), "--name", "my-gru",
         "--out", str(tmp_path / "models")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert "streamable" in done.stdout
    assert "state   state_in -> state_out FP32 [2, -1, 16] (batch axis 1)" in done.stdout
    spec = stored_spec(tmp_path / "models" / "my-gru" / "1" / "model.onnx")
    assert (spec.task, spec.streamable, spec.graphs) == ("recurrent", True, {"model": "model.onnx"})
    # What only the onnx package reads: the GRU nodes' cell, layers and hidden size.
    assert (spec.cell, spec.num_layers, spec.hidden_size, spec.num_directions) == ("gru", 2, 16, 1)
    assert spec.training["imported_from"] == "model.onnx"


def test_a_bidirectional_export_is_imported_for_whole_sequences(user_exports, tmp_path) -> None:
    path, spec = import_graph(user_exports["bilstm"][1], tmp_path, "bi")

    assert path == tmp_path / "bi" / "1" / "model.onnx"
    assert (spec.cell, spec.num_directions, spec.streamable) == ("lstm", 2, False)
    path, _ = import_graph(user_exports["bilstm"][1], tmp_path, "bi")
    assert path.parent.name == "2"  # the next free version


def test_the_sidecar_beside_the_graph_is_read(user_exports, tmp_path: Path) -> None:
    graph = tmp_path / "user" / "model.onnx"
    graph.parent.mkdir()
    shutil.copyfile(user_exports["projected"][1], graph)
    (graph.parent / "model.json").write_text(
        json.dumps({"states": [{"input": "state_in", "output": "state_out"}]})
    )

    _, spec = import_graph(graph, tmp_path / "models", "projected")

    # memory -> memory_out is no longer a state: the sidecar named the only one.
    assert [s.input for s in spec.states] == ["state_in"]
    assert sorted(t.name for t in spec.data_inputs or []) == ["features", "memory"]


def test_mistakes_are_one_line(user_exports, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx file")
    with pytest.raises(VerificationError, match=r"onnx\.checker refuses garbage\.onnx"):
        import_graph(garbage, tmp_path / "models", "garbage")
    with pytest.raises(UsageError, match="is not a folder name"):
        import_graph(user_exports["gru2"][1], tmp_path / "models", "../elsewhere")
    (tmp_path / "hints.json").write_text('{"states": "h0"}')
    with pytest.raises(UsageError, match=r"hints\.json: states: Input should be a valid list"):
        import_graph(user_exports["gru2"][1], tmp_path, "gru", sidecar=tmp_path / "hints.json")
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())
