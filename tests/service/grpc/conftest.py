"""Fixtures of the gRPC tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from grpc_helpers import Reference


@pytest.fixture(scope="session")
def reference(tiny_repository: Path) -> Reference:
    return Reference(tiny_repository)


@pytest.fixture(scope="session")
def own_model_matrix(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every own model of the matrix (tests/user_exports.py: MATRIX), exported once:
    name -> MatrixExport (the case, its PyTorch module, its model.onnx)."""
    from user_exports import export_matrix

    return export_matrix(tmp_path_factory.mktemp("own-model-matrix"))
