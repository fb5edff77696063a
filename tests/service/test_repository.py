"""The model repository as the data plane loads it: integer versions, the newest by
default, a version policy per model, broken folders isolated and reported, readiness
that tells the truth about them."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from rnnserve.export.metadata import write_spec
from rnnserve.model.sidecar import DynamicBatchingHint
from rnnserve.model.spec import ModelSpec
from rnnserve.protocol.errors import UsageError
from rnnserve.service.dataplane import DataPlane
from rnnserve.service.errors import NotFound, Unavailable
from rnnserve.service.repository import Repository, dynamic_batching
from rnnserve.service.sessions import open_store
from rnnserve.service.settings import Settings
from rnnserve.service.types import DynamicBatching


def loaded_plane(root: Path, **settings: object) -> tuple[DataPlane, asyncio.Runner]:
    config = Settings(model_repository=root, **settings)  # type: ignore[arg-type]
    runner = asyncio.Runner()
    plane = DataPlane(config, open_store(config))
    runner.run(plane.load())
    return plane, runner


@pytest.fixture(scope="module")
def broken_root(
    tiny_repository: Path, user_exports: dict, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """sine-gru in versions 1 and 3, a tagger, and four kinds of broken folder."""
    root = tmp_path_factory.mktemp("repository")
    for version in ("1", "3"):
        shutil.copytree(tiny_repository / "sine-gru" / "1", root / "sine-gru" / version)
    shutil.copytree(tiny_repository / "tagger-lstm" / "1", root / "tagger-lstm" / "1")
    (root / "tagger-lstm" / "notes").mkdir()  # not a version: ignored
    (root / ".staging-sine-rnn-1-x").mkdir()  # an export in progress: ignored
    (root / "garbage" / "1").mkdir(parents=True)
    (root / "garbage" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    (root / "empty" / "1").mkdir(parents=True)
    # A seq2seq version whose decoder went missing.
    shutil.copytree(tiny_repository / "seq2seq-rnn" / "1", root / "seq2seq-rnn" / "2")
    (root / "seq2seq-rnn" / "2" / "decoder.onnx").unlink()
    # A user's GRU (features, state_in) with a hand-written spec pretending to be a sine.
    pretender = root / "pretender" / "1" / "model.onnx"
    pretender.parent.mkdir(parents=True)
    shutil.copyfile(user_exports["gru2"][1], pretender)
    write_spec(pretender, ModelSpec(
        task="sine", cell="gru", num_layers=2, hidden_size=16, input_size=4, output_size=16,
        graphs={"model": "model.onnx"}, graph_inputs={"model": ["features", "state_in"]},
        graph_outputs={"model": ["out", "state_out"]}, streamable=True,
    ))  # fmt: skip
    return root


@pytest.fixture(scope="module")
def repository(broken_root: Path) -> Iterator[Repository]:
    plane, runner = loaded_plane(broken_root)
    yield plane.repository
    runner.run(plane.close())
    runner.close()


def test_every_version_loads_and_the_newest_is_the_default(repository: Repository) -> None:
    assert repository.versions("sine-gru") == ["1", "3"]
    assert repository.get("sine-gru").version == "3"
    assert repository.get("sine-gru", "1").version == "1"
    assert repository.get("tagger-lstm").spec.task == "tagger"
    assert repository.names() == [
        "empty", "garbage", "pretender", "seq2seq-rnn", "sine-gru", "tagger-lstm",
    ]  # fmt: skip


def test_broken_folders_are_reported_and_do_not_stop_the_others(repository: Repository) -> None:
    entries = {(e.name, e.version): e for e in repository.entries()}
    assert entries[("sine-gru", "1")].state == "READY"
    assert entries[("sine-gru", "3")].state == "READY"
    assert entries[("garbage", "1")].state == "UNAVAILABLE"
    assert entries[("empty", "1")].reason == "failed to load: no .onnx file in the version folder"
    assert "decoder.onnx is missing" in entries[("seq2seq-rnn", "2")].reason
    assert [(name, version) for name, version, _ in repository.failures()] == [
        ("empty", "1"), ("garbage", "1"), ("pretender", "1"), ("seq2seq-rnn", "2"),
    ]  # fmt: skip
    # A graph under a task's spec must have the task's tensors, or it would fail every
    # request; the reason says where such a graph belongs.
    assert entries[("pretender", "1")].reason == (
        "failed to load: task sine reads graph 'model' inputs ['x', 'h0']; this one has "
        "['features', 'state_in']: a graph with tensors of its own names is served by the "
        "recurrent task (rnnserve import, or no rnnserve metadata at all)"
    )
    with pytest.raises(Unavailable, match="model 'garbage' version 1 is unavailable"):
        repository.get("garbage", "1")
    with pytest.raises(
        Unavailable, match=r"model 'garbage' has no version loaded \(version 1: fail"
    ):
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
        Repository(Settings(model_repository=tmp_path / "nowhere")).check_root()


def test_failed_versions_keep_a_server_ready_unless_readiness_is_strict(broken_root: Path) -> None:
    lenient, runner = loaded_plane(broken_root)
    strict, strict_runner = loaded_plane(broken_root, strict_readiness=True)
    try:
        assert lenient.ready() and not strict.ready()
        # Either way a model is ready only with a version loaded.
        assert strict.model_ready("sine-gru") and not strict.model_ready("garbage")
    finally:
        for plane, loop in ((lenient, runner), (strict, strict_runner)):
            loop.run(plane.close())
            loop.close()


def test_a_server_with_no_model_loaded_is_never_ready(tmp_path: Path) -> None:
    (tmp_path / "garbage" / "1").mkdir(parents=True)
    (tmp_path / "garbage" / "1" / "model.onnx").write_bytes(b"not an onnx file")

    plane, runner = loaded_plane(tmp_path)
    try:
        assert plane.live() and not plane.ready()
    finally:
        runner.run(plane.close())
        runner.close()


def test_a_version_policy_in_the_models_sidecar_selects_versions(
    tiny_repository: Path, tmp_path: Path
) -> None:
    for version in ("1", "2", "5"):
        shutil.copytree(tiny_repository / "sine-rnn" / "1", tmp_path / "sine-rnn" / version)
    policy = {"version_policy": {"latest": {"num_versions": 2}}}
    (tmp_path / "sine-rnn" / "model.json").write_text(json.dumps(policy))

    plane, runner = loaded_plane(tmp_path)
    try:
        repository = plane.repository
        assert repository.versions("sine-rnn") == ["2", "5"]
        assert {e.version: e.reason for e in repository.entries()}["1"] == (
            "not loaded: not in the version policy (latest 2)"
        )
        assert repository.failures() == [] and plane.ready()
    finally:
        runner.run(plane.close())
        runner.close()


def test_dynamic_batching_is_the_flags_unless_the_models_sidecar_says_otherwise() -> None:
    off, on = Settings(), Settings(dynamic_batching=True, dynamic_batch_preferred_sizes=[4])

    assert dynamic_batching(off, None) is None  # the default: each request runs alone
    assert dynamic_batching(on, None) == DynamicBatching((4,), 100, 64)
    # A sidecar turns it on, each knob it leaves out being the flag's.
    own = DynamicBatchingHint(max_queue_delay_microseconds=0, max_batch_size=8)
    assert dynamic_batching(off, own) == DynamicBatching((), 0, 8)
    assert dynamic_batching(on, own) == DynamicBatching((4,), 0, 8)


def test_a_preferred_batch_size_beyond_the_largest_batch_fails_the_version(
    tiny_repository: Path, tmp_path: Path
) -> None:
    shutil.copytree(tiny_repository / "sine-rnn" / "1", tmp_path / "sine-rnn" / "1")
    batching = {"dynamic_batching": {"preferred_batch_size": [4, 16], "max_batch_size": 8}}
    (tmp_path / "sine-rnn" / "model.json").write_text(json.dumps(batching))

    plane, runner = loaded_plane(tmp_path)
    try:
        assert plane.repository.failures() == [(
            "sine-rnn", "1", "failed to load: dynamic batching: preferred batch sizes [16] "
            "exceed the max batch size 8",
        )]  # fmt: skip
    finally:
        runner.run(plane.close())
        runner.close()
