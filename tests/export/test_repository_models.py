"""The tiny repository: nine self-describing, verified models the server can load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from rnnserve.export.config import DEFAULT_NAMES
from rnnserve.export.tasks import seq2seq, tagger
from rnnserve.model.spec import METADATA_KEY, ModelSpec


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_build_writes_version_1_of_the_nine_default_models(tiny_repository: Path) -> None:
    assert sorted(p.name for p in tiny_repository.iterdir()) == sorted(DEFAULT_NAMES)
    for name in DEFAULT_NAMES:
        assert [p.name for p in (tiny_repository / name).iterdir()] == ["1"]


@pytest.mark.parametrize("name", DEFAULT_NAMES)
def test_metadata_round_trips_through_onnxruntime(tiny_repository: Path, name: str) -> None:
    folder = tiny_repository / name / "1"
    specs = []
    for role, file in ModelSpec.from_json(_read_spec(folder)).graphs.items():
        session = _session(folder / file)
        spec = ModelSpec.from_json(session.get_modelmeta().custom_metadata_map[METADATA_KEY])
        assert [i.name for i in session.get_inputs()] == spec.graph_inputs[role]
        assert [o.name for o in session.get_outputs()] == spec.graph_outputs[role]
        for state in session.get_inputs()[1:]:
            assert state.shape[0] == spec.state_rows and state.shape[2] == spec.hidden_size
        specs.append(spec)
    task, cell = name.split("-")
    assert all(s == specs[0] for s in specs)  # every graph of a version holds the same spec
    # Every default model is one-way, so every one can stream (seq2seq through its encoder).
    assert (specs[0].task, specs[0].cell, specs[0].streamable) == (task, cell, True)
    assert specs[0].training["parity_error"] <= 1e-5
    assert specs[0].training["chunk_error"] <= 1e-5


def _read_spec(folder: Path) -> str:
    first = sorted(folder.glob("*.onnx"))[0]
    return _session(first).get_modelmeta().custom_metadata_map[METADATA_KEY]


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_tagger_graph_tags_hello_as_ohlol(tiny_repository: Path, cell: str) -> None:
    session = _session(tiny_repository / f"tagger-{cell}" / "1" / "model.onnx")
    rows = 2 if cell == "lstm" else 1
    zeros = np.zeros((1, 1, session.get_inputs()[1].shape[2]), np.float32)
    feeds = {"tokens": np.array([tagger.encode("hello")]), "h0": zeros}
    if rows == 2:
        feeds["c0"] = zeros
    logits = session.run(["logits"], feeds)[0]
    assert tagger.decode(logits.argmax(-1)[0].tolist()) == "ohlol"


def test_seq2seq_spec_names_vocabularies_and_special_tokens(tiny_repository: Path) -> None:
    spec = ModelSpec.from_json(_read_spec(tiny_repository / "seq2seq-gru" / "1"))
    assert spec.graphs == {"encoder": "encoder.onnx", "decoder": "decoder.onnx"}
    assert spec.graph_outputs["decoder"] == ["logits", "next_token", "hn"]
    assert spec.vocab[:3] == spec.target_vocab[:3] == ["<pad>", "<bos>", "<eos>"]
    assert (spec.pad_id, spec.bos_id, spec.eos_id) == (seq2seq.PAD, seq2seq.BOS, seq2seq.EOS)
    assert spec.max_output_length == seq2seq.MAX_OUTPUT_LENGTH
