"""Fixtures of the gRPC tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from grpc_helpers import Reference
from model_cache import cached_exports, unchanged


@pytest.fixture(scope="session")
def reference(tiny_repository: Path) -> Reference:
    return Reference(tiny_repository)


@pytest.fixture(scope="session")
def own_model_matrix() -> Iterator[dict]:
    """Every own model of the matrix (tests/user_exports.py: MATRIX), exported once per
    content of tests/user_exports.py and kept (tests/model_cache.py), so read only:
    name -> MatrixExport (the case, its PyTorch module, its model.onnx)."""
    from user_exports import export_matrix, matrix_in

    with unchanged(cached_exports("own-model-matrix", export_matrix)) as root:
        yield matrix_in(root)
