"""A model that fails a check is refused and leaves nothing in the repository."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from rnnserve.export.config import config_for_name
from rnnserve.export.errors import VerificationError
from rnnserve.export.exporter import export_version
from rnnserve.export.tasks.tagger import Tagger
from rnnserve.export.training import train_model


class DiffersWhenTraced(Tagger):
    """Broken on purpose: a Python branch the exporter cannot see, so the ONNX graph
    computes something other than torch does."""

    def forward(self, tokens: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        logits, *final = super().forward(tokens, *state)
        if not torch.jit.is_tracing():
            logits = logits + 0.001
        return (logits, *final)


def test_broken_model_is_refused_naming_the_check_and_leaves_nothing(tmp_path: Path) -> None:
    trained = train_model(config_for_name("tagger-gru", preset="tiny"))
    broken = DiffersWhenTraced(trained.config)
    broken.load_state_dict(trained.model.state_dict())
    trained.model = broken.eval()

    expected = r"check \(c\) parity failed for model: .* on logits by .* > 1e-05 at batch=1, seq=1"
    with pytest.raises(VerificationError, match=expected):
        export_version(trained, tmp_path, version=1)
    assert list(tmp_path.iterdir()) == []


def test_model_that_did_not_learn_hello_is_refused(tmp_path: Path) -> None:
    trained = train_model(config_for_name("tagger-rnn", preset="tiny", epochs=1))
    assert trained.quality < 1.0
    with pytest.raises(VerificationError, match="quality check failed for tagger-rnn"):
        export_version(trained, tmp_path, version=1)
    assert list(tmp_path.iterdir()) == []
