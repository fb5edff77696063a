"""The date model: sources never padded, the held-out exact match measured on each date
format, and greedy decoding through the ONNX graphs equal to torch's (the dates themselves:
test_dates.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rnnserve.export.config import config_for_name
from rnnserve.export.dates import FORMATS
from rnnserve.export.exporter import export_version
from rnnserve.export.tasks import seq2seq
from rnnserve.export.training import train_model
from rnnserve.export.verify import open_session
from rnnserve.model.spec import METADATA_KEY, ModelSpec, cell_states, rows_by_length


def test_sources_are_grouped_by_length_never_padded() -> None:
    assert rows_by_length(["1/2/03", "22 nov 2026", "3/4/05"]) == {6: [0, 2], 11: [1]}
    assert seq2seq.PAD not in seq2seq.encode_sources(["1/2/03", "3/4/05"]).flatten().tolist()
    with pytest.raises(ValueError, match="one length"):
        seq2seq.encode_sources(["1/2/03", "22 nov 2026"])


def test_a_rows_encoding_does_not_depend_on_its_batch() -> None:
    model = seq2seq.Seq2Seq(config_for_name("seq2seq-gru", preset="tiny")).eval()
    with torch.no_grad():
        alone = model.encode_texts(["7/4/76"])[0]
        batched = model.encode_texts(["22 nov 2026", "7/4/76", "1/2/03"])[0]
    torch.testing.assert_close(batched[:, 1:2], alone, rtol=0, atol=1e-6)


def test_onnx_greedy_decoding_equals_torch(tmp_path: Path) -> None:
    trained = train_model(config_for_name("seq2seq-lstm", preset="tiny"))
    result = export_version(trained, tmp_path, version=1)
    pairs = seq2seq.held_out_sources(seed=5, count=32)
    sources = [s for s, _ in pairs]

    expected = seq2seq.greedy(trained.model, sources).numpy()
    actual = seq2seq.onnx_greedy(
        open_session(result.path / "encoder.onnx"),
        open_session(result.path / "decoder.onnx"),
        sources,
        cell_states("lstm"),
        steps=seq2seq.MAX_OUTPUT_LENGTH,
    )
    np.testing.assert_array_equal(actual, expected)


def test_held_out_exact_match_is_measured_on_each_format(tiny_repository: Path) -> None:
    encoder = open_session(tiny_repository / "seq2seq-gru" / "1" / "encoder.onnx")
    meta = encoder.get_modelmeta().custom_metadata_map[METADATA_KEY]
    training = ModelSpec.from_json(meta).training
    name = seq2seq.QUALITY_NAME

    parts = {key: value for key, value in training.items() if key.startswith(f"{name}[")}

    assert list(parts) == [f"{name}[{form.name}]" for form in FORMATS]
    assert all(0 <= float(value) <= 1 for value in parts.values())
    overall = sum(map(float, parts.values())) / len(parts)  # every format weighs the same
    assert training[name] == pytest.approx(overall)


def test_each_format_is_held_out_alike() -> None:
    by_format = seq2seq.held_out_by_format(seed=0, count=50)
    assert list(by_format) == [form.name for form in FORMATS]
    assert all(len(pairs) == 50 for pairs in by_format.values())
    assert by_format == seq2seq.held_out_by_format(seed=0, count=50)  # seeded
