"""Fixtures of the gRPC tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from grpc_helpers import Reference


@pytest.fixture(scope="session")
def reference(tiny_repository: Path) -> Reference:
    return Reference(tiny_repository)
