"""The model repository: integer versions, newest by default, broken folders isolated."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rnnserve.errors import UsageError
from rnnserve.service.errors import NotFound, Unavailable
from rnnserve.service.repository import Repository
from rnnserve.service.settings import Settings


@pytest.fixture(scope="module")
def repository(tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Repository:
    """sine-gru in versions 1 and 3, a tagger, and three kinds of broken folder."""
    root = tmp_path_factory.mktemp("repository")
    for version in ("1", "3"):
        shutil.copytree(tiny_repository / "sine-gru" / "1", root / "sine-gru" / version)
    shutil.copytree(tiny_repository / "tagger-lstm" / "1", root / "tagger-lstm" / "1")
    (root / "tagger-lstm" / "notes").mkdir()  # not a version: ignored
    (root / "garbage" / "1").mkdir(parents=True)
    (root / "garbage" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    (root / "empty" / "1").mkdir(parents=True)
    # A seq2seq version whose decoder went missing.
    shutil.copytree(tiny_repository / "seq2seq-rnn" / "1", root / "seq2seq-rnn" / "2")
    (root / "seq2seq-rnn" / "2" / "decoder.onnx").unlink()
    loaded = Repository(Settings(model_repository=root))
    loaded.load()
    return loaded


def test_every_version_loads_and_the_newest_is_the_default(repository: Repository) -> None:
    assert repository.versions("sine-gru") == ["1", "3"]
    assert repository.get("sine-gru").version == "3"
    assert repository.get("sine-gru", "1").version == "1"
    assert repository.get("tagger-lstm").spec.task == "tagger"


def test_broken_folders_are_reported_and_do_not_stop_the_others(repository: Repository) -> None:
    entries = {(e.name, e.version): e for e in repository.entries()}
    assert entries[("sine-gru", "1")].state == "READY"
    assert entries[("sine-gru", "3")].state == "READY"
    assert entries[("garbage", "1")].state == "UNAVAILABLE"
    assert entries[("empty", "1")].reason == "failed to load: no .onnx file in the version folder"
    assert "decoder.onnx is missing" in entries[("seq2seq-rnn", "2")].reason
    with pytest.raises(Unavailable, match="model 'garbage' version 1 is unavailable"):
        repository.get("garbage", "1")
    with pytest.raises(Unavailable, match="model 'garbage' has no version that loaded"):
        repository.get("garbage")


def test_unknown_names_and_versions_are_not_found(repository: Repository) -> None:
    with pytest.raises(NotFound, match=r"unknown model 'sine-lstm'; available models: \["):
        repository.get("sine-lstm")
    with pytest.raises(NotFound, match=r"model 'sine-gru' has no version '2'.*\['1', '3'\]"):
        repository.get("sine-gru", "2")
    with pytest.raises(NotFound, match="no version 'latest'"):
        repository.get("sine-gru", "latest")


def test_a_missing_repository_folder_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is not a folder"):
        Repository(Settings(model_repository=tmp_path / "nowhere")).load()
