"""The date rule, and greedy decoding through the ONNX graphs equal to torch's."""

from __future__ import annotations

import datetime
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnserve.export.config import config_for_name
from rnnserve.export.exporter import export_version
from rnnserve.export.tasks import seq2seq
from rnnserve.export.training import train_model
from rnnserve.export.verify import open_session
from rnnserve.model.spec import cell_states, rows_by_length


def test_dates_are_written_two_ways_and_normalised_to_iso() -> None:
    date = datetime.date(2026, 11, 22)
    assert seq2seq.write_date(date, 0) == "22 nov 2026"
    assert seq2seq.write_date(date, 1) == "11/22/26"
    assert date.isoformat() == "2026-11-22"


def test_held_out_dates_never_appear_in_training() -> None:
    training = seq2seq.sample_pairs(random.Random(0), 2000, held_out=False)
    held_out = seq2seq.sample_pairs(random.Random(1), 200, held_out=True)
    assert not {t for _, t in training} & {t for _, t in held_out}


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
