"""Fixtures shared by every test package."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The nine default models, trained briefly at small sizes and fully verified."""
    from export.build import build_repository

    root = tmp_path_factory.mktemp("models")
    build_repository(root, preset="tiny", seed=0)
    return root
