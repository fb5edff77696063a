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
from user_exports import export_fixed_length, export_stateless

from rnnserve.export.errors import VerificationError
from rnnserve.export.importer import describe_import, import_graph
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
    imported = import_graph(user_exports["bilstm"][1], tmp_path, "bi")

    assert imported.path == tmp_path / "bi" / "1" / "model.onnx"
    spec = imported.spec
    assert (spec.cell, spec.num_directions, spec.streamable) == ("lstm", 2, False)
    assert import_graph(user_exports["bilstm"][1], tmp_path, "bi").path.parent.name == "2"


def test_the_sidecar_beside_the_graph_is_read(user_exports, tmp_path: Path) -> None:
    graph = tmp_path / "user" / "model.onnx"
    graph.parent.mkdir()
    shutil.copyfile(user_exports["projected"][1], graph)
    (graph.parent / "model.json").write_text(
        json.dumps({"states": [{"input": "state_in", "output": "state_out"}]})
    )

    spec = import_graph(graph, tmp_path / "models", "projected").spec

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


def test_a_dynamo_export_is_imported_with_its_external_data_and_its_lengths_dynamic(
    user_exports, tmp_path: Path
) -> None:
    """torch's dynamo exporter writes the weights beside the graph (model.onnx.data) and
    declares `out` with the example's 5 steps, though the graph computes any length."""
    graph = user_exports["gru2-dynamo"][1]
    assert graph.with_name("model.onnx.data").is_file()

    imported = import_graph(graph, tmp_path, "gru")

    assert sorted(p.name for p in imported.path.parent.iterdir()) == [
        "model.onnx",
        "model.onnx.data",
    ]
    session = ort.InferenceSession(str(imported.path), providers=["CPUExecutionProvider"])
    out = session.get_outputs()[0]
    assert (out.name, out.shape[1:]) == ("out", ["sequence", 16])  # its batch: torch's name
    assert imported.spec.streamable
    said = describe_import(imported)
    assert "changed output 'out' axis 1: the export declares 5 (the example's)" in said
    assert "changed weights kept in external data: model.onnx.data beside the graph" in said


def test_what_a_model_serves_is_said_at_import(user_exports, tmp_path: Path) -> None:
    streams = describe_import(import_graph(user_exports["gru2"][1], tmp_path, "gru"))
    bidirectional = describe_import(import_graph(user_exports["bilstm"][1], tmp_path, "bi"))
    export_stateless(tmp_path / "stateless.onnx")
    stateless = describe_import(import_graph(tmp_path / "stateless.onnx", tmp_path, "nostate"))

    assert "serves  whole sequences: each request on its own, its states from zeros" in streams
    assert "serves  sequences in pieces: a session per sequence_id" in streams
    assert "serves  multi-session rows: a session per batch row" in streams
    assert "serves  whole sequences" in bidirectional
    assert (
        "refuses sequences in pieces and multi-session rows: model 'bi' is bidirectional and "
        "cannot stream: its backward direction needs the whole sequence"
    ) in bidirectional
    assert "serves  whole sequences: each request on its own\n" in stateless
    assert (
        "refuses sequences in pieces and multi-session rows: model 'nostate' keeps no state "
        "between requests"
    ) in stateless


def test_a_length_fixed_at_export_is_refused_in_one_line_with_the_fix(
    user_exports, tmp_path: Path
) -> None:
    # torch's dynamo exporter unrolls an nn.RNN over the example's steps.
    with pytest.raises(VerificationError) as unrolled:
        import_graph(user_exports["rnn-dynamo"][1], tmp_path, "rnn")
    # An input whose length the export fixed, where the graph runs at any.
    graph = tmp_path / "fixed" / "model.onnx"
    graph.parent.mkdir()
    export_fixed_length(graph)
    with pytest.raises(VerificationError) as fixed:
        import_graph(graph, tmp_path, "fixed")

    assert "computes a length fixed at export" in str(unrolled.value)
    assert "dynamo=False" in str(unrolled.value) and "\n" not in str(unrolled.value)
    assert str(fixed.value) == (
        "model.onnx: input 'features' is exported with the fixed size 5 at axis 1, yet the "
        "graph runs at any size there: export that axis dynamic (torch.onnx.export's "
        "dynamic_shapes= with torch.export.Dim.AUTO, or dynamic_axes= with dynamo=False), or, "
        'if its length is meant to be fixed, give its "sequence_axis": null in model.json'
    )
    # Said so, a fixed length is served: 5 steps a request.
    (graph.parent / "model.json").write_text(
        json.dumps({"inputs": {"features": {"sequence_axis": None}}})
    )
    spec = import_graph(graph, tmp_path, "fixed").spec
    assert [(t.shape, t.sequence_axis) for t in spec.data_inputs or []] == [((-1, 5, 4), None)]
    assert not (tmp_path / "rnn").exists()


def test_a_sidecar_for_a_dynamo_export_is_read_and_its_faults_named(
    user_exports, tmp_path: Path
) -> None:
    graph = tmp_path / "user" / "model.onnx"
    shutil.copytree(user_exports["gru2-dynamo"][1].parent, graph.parent)
    hints = graph.with_name("model.json")

    hints.write_text(json.dumps({"outputs": {"out": {"batch_axis": 0, "sequence_axis": 1}}}))
    spec = import_graph(graph, tmp_path / "models", "gru").spec
    hints.write_text(json.dumps({"outputs": {"out": {"sequence_axis": 2}}}))
    with pytest.raises(VerificationError) as refused:
        import_graph(graph, tmp_path / "models", "gru")

    assert [(t.batch_axis, t.sequence_axis) for t in spec.data_outputs or []] == [(0, 1)]
    assert str(refused.value) == (
        "model.onnx: model.json: outputs.out.sequence_axis: output 'out' (of shape [3, 7, 16] "
        "for 3 rows of 7 steps) is not dynamic at axis 2"
    )
