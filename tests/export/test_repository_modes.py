"""A published version is readable by every user, whatever the umask of the build: the
container's server (uid 10001) reads repositories that another user built."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from rnnserve.export.repository import staged_version


@pytest.fixture
def private_umask() -> Iterator[None]:
    previous = os.umask(0o077)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_published_version_is_readable_by_all(tmp_path: Path, private_umask: None) -> None:
    with staged_version(tmp_path, "sine-gru", 1) as folder:
        (folder / "model.onnx").write_bytes(b"graph")
        (folder / "extra").mkdir()
        (folder / "extra" / "notes.txt").write_text("notes")

    version = tmp_path / "sine-gru" / "1"
    assert mode(version.parent) == 0o755
    assert mode(version) == 0o755
    assert mode(version / "extra") == 0o755
    assert mode(version / "model.onnx") == 0o644
    assert mode(version / "extra" / "notes.txt") == 0o644
