"""The GPU tier (marker `gpu`): skipped without an NVIDIA GPU and onnxruntime-gpu.
scripts/gpu-check.sh runs it on a GPU machine, with the tiny models it carries there
(RNNSERVE_GPU_MODELS): building them would need torch's training, minutes there."""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort
import pytest

from rnnserve.service.device import CUDA_PROVIDER, gpu_visible

CUDA = CUDA_PROVIDER in ort.get_available_providers() and gpu_visible()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.gpu)
            if not CUDA:
                item.add_marker(pytest.mark.skip(reason="no NVIDIA GPU with onnxruntime-gpu here"))


@pytest.fixture(scope="session")
def gpu_repository(request: pytest.FixtureRequest) -> Path:
    """The nine tiny default models: RNNSERVE_GPU_MODELS, else the tests' cached ones."""
    carried = os.environ.get("RNNSERVE_GPU_MODELS")
    if carried:
        return Path(carried)
    return Path(request.getfixturevalue("tiny_repository"))
