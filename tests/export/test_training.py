"""Training is seeded and a checkpoint brings the same model back."""

from __future__ import annotations

from pathlib import Path

import torch

from rnnserve.export.config import config_for_name
from rnnserve.export.tasks import task_module
from rnnserve.export.training import TrainedModel, load_run, save_run, train_model


def test_same_seed_trains_the_same_weights_and_another_seed_does_not() -> None:
    first = train_model(config_for_name("sine-lstm", preset="tiny", seed=3))
    again = train_model(config_for_name("sine-lstm", preset="tiny", seed=3))
    other = train_model(config_for_name("sine-lstm", preset="tiny", seed=4))
    for name, weight in first.model.state_dict().items():
        torch.testing.assert_close(weight, again.model.state_dict()[name], rtol=0, atol=0)
    assert first.losses == again.losses != other.losses


def test_checkpoint_round_trip_restores_config_weights_and_quality(tmp_path: Path) -> None:
    trained = train_model(config_for_name("tagger-gru", preset="tiny"))
    save_run(trained, tmp_path / "tagger-gru")
    restored = load_run(tmp_path / "tagger-gru")
    assert (restored.config, restored.quality) == (trained.config, trained.quality)
    tokens = torch.tensor([[1, 0, 2, 2, 3]])
    state = torch.zeros(1, 1, trained.config.hidden_size)
    with torch.no_grad():
        torch.testing.assert_close(restored.model(tokens, state), trained.model(tokens, state))


def test_a_checkpoint_keeps_the_quality_of_each_part(tmp_path: Path) -> None:
    # What a trained seq2seq model keeps: its quality on each date format. Training one takes
    # seconds and gives a tiny model zeros everywhere; made by hand, the parts differ.
    config = config_for_name("seq2seq-gru", preset="tiny")
    parts = {"yyyy-mm-dd": 0.75, "d month yyyy": 0.5, "m/d/yy": 0.25}
    trained = TrainedModel(
        config, task_module("seq2seq").build_model(config), [2.0, 1.0], 0.5, 1.0, parts
    )
    save_run(trained, tmp_path / "seq2seq-gru")
    restored = load_run(tmp_path / "seq2seq-gru")
    assert restored.quality_parts == parts
