"""`rnnserve build/train/export`: repository versions, and one clear line for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import rnnserve

from rnnserve.export.build import BuildResult, build_repository, summary_table
from rnnserve.model.spec import METADATA_KEY, ModelSpec
from rnnserve.protocol.errors import UsageError


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "poetry", "lstm"], "unknown task 'poetry'"),
        (["train", "tagger", "transformer"], "unknown cell 'transformer'"),
        (["train", "tagger", "lstm", "--hidden", "0"], "hidden_size must be at least 1"),
        (["build", "--models", "sine-lstm", "--preset", "huge"], "unknown preset 'huge'"),
        (["build", "--models", "sine"], "model name 'sine' is not <task>-<cell>[-bi]"),
        (["train", "sine", "gru", "--bidirectional"], "task sine has no bidirectional variant"),
    ],
)
def test_bad_input_gives_one_line_and_nonzero_exit(args: list[str], message: str) -> None:
    result = rnnserve(*args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert "Traceback" not in result.stderr


def test_unwritable_output_directory_gives_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = rnnserve("build", "--models", "tagger-rnn", "--out", str(blocker / "models"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "cannot write to output directory" in result.stderr


@pytest.mark.slow  # trains, plots and exports: the build of one model end to end
def test_train_then_export_writes_checkpoint_plots_and_a_verified_version(tmp_path: Path) -> None:
    runs, models = tmp_path / "runs", tmp_path / "models"
    trained = rnnserve("train", "sine", "gru", "--preset", "tiny", "--runs", str(runs))
    assert trained.returncode == 0, trained.stderr
    assert sorted(p.name for p in (runs / "sine-gru").iterdir()) == [
        "checkpoint.pt",
        "loss.png",
        "stream.png",
    ]
    exported = rnnserve("export", str(runs / "sine-gru"), "--out", str(models))
    assert exported.returncode == 0, exported.stderr
    assert (models / "sine-gru" / "1" / "model.onnx").is_file()


def test_skip_existing_leaves_present_models_and_new_version_adds_one(tmp_path: Path) -> None:
    first = build_repository(tmp_path, ["tagger-rnn"], preset="tiny")
    with pytest.raises(UsageError, match=r"tagger-rnn already in .*--skip-existing"):
        build_repository(tmp_path, ["tagger-rnn"], preset="tiny")
    again = build_repository(tmp_path, ["tagger-rnn"], preset="tiny", skip_existing=True)
    newer = build_repository(tmp_path, ["tagger-rnn"], preset="tiny", new_version=True)
    assert (first[0].version, again[0].skipped, newer[0].version) == (1, True, 2)
    assert sorted(p.name for p in (tmp_path / "tagger-rnn").iterdir()) == ["1", "2"]
    table = summary_table(first + again)
    assert "tagger-rnn" in table and "hello_exact=1" in table and "skipped" in table


def test_the_report_gives_each_date_formats_figure_for_each_seq2seq_model() -> None:
    def result(name: str, quality: float, parts: dict[str, float]) -> BuildResult:
        quality_name = "heldout_exact_match" if parts else "hello_exact"
        return BuildResult(
            name, 1, Path(name), quality_name=quality_name, quality=quality, quality_parts=parts
        )

    table = summary_table(
        [
            result("tagger-gru", 1.0, {}),
            result("seq2seq-lstm", 0.995, {"d mon yyyy": 1.0, "m/d/yy": 0.99}),
            result("seq2seq-gru", 1.0, {"d mon yyyy": 1.0, "m/d/yy": 1.0}),
        ]
    )

    models, formats = table.split("\n\n")
    assert "seq2seq-lstm" in models and "heldout_exact_match=0.995" in models
    assert formats.splitlines() == [
        "heldout_exact_match  seq2seq-lstm  seq2seq-gru",
        "-------------------  ------------  -----------",
        "d mon yyyy           1             1",
        "m/d/yy               0.99          1",
    ]


def test_bidirectional_tagger_is_exported_as_not_streamable(tmp_path: Path) -> None:
    import onnxruntime as ort

    [result] = build_repository(tmp_path, ["tagger-lstm-bi"], preset="tiny")
    assert result.chunk_error is None and result.quality == 1.0
    session = ort.InferenceSession(str(result.path / "model.onnx"))
    spec = ModelSpec.from_json(session.get_modelmeta().custom_metadata_map[METADATA_KEY])
    assert (spec.num_directions, spec.streamable, spec.state_rows) == (2, False, 2)
