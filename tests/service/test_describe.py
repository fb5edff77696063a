"""A graph without rnnserve metadata described from what ONNX Runtime reads of it, with the
hints of a model.json sidecar: state pairs, batch and sequence axes, streaming earned by the
chunk check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from user_exports import export_stateless, export_step_cell

from rnnserve.model.describe import TOLERANCE, describe
from rnnserve.model.sidecar import Sidecar, VersionPolicy, read_sidecar


@pytest.mark.parametrize("name", ["gru2", "lstm-seq-first", "bilstm", "projected", "gru2-dynamo"])
def test_a_users_export_is_described_by_its_own_names_and_axes(user_exports, name: str) -> None:
    export, path = user_exports[name]

    spec = describe(path)

    assert spec.task == "recurrent"
    assert {s.input: s.output for s in spec.states} == export.states
    (data_input,) = spec.data_inputs
    (data_output,) = spec.data_outputs
    assert (data_input.name, data_output.name) == (export.data_input, export.data_output)
    for tensor in (data_input, data_output):
        assert (tensor.batch_axis, tensor.sequence_axis) == (
            export.batch_axis,
            export.sequence_axis,
        )
    # Streaming is earned: the bidirectional LSTM answers differently fed in chunks.
    assert spec.streamable is not export.bidirectional
    assert (spec.training["chunk_error"] > TOLERANCE) is export.bidirectional


def test_an_output_declared_with_the_examples_length_is_described_dynamic_there(
    user_exports,
) -> None:
    """torch's dynamo exporter declares `out` [batch, 5, 16], 5 the example's steps; the
    graph computes the request's length, which the runs prove."""
    spec = describe(user_exports["gru2-dynamo"][1])

    assert [(t.name, t.shape) for t in spec.data_outputs or []] == [("out", (-1, -1, 16))]
    assert spec.streamable


def test_a_graph_that_computes_the_examples_length_is_refused_with_the_fix(user_exports) -> None:
    """torch's dynamo exporter unrolls an nn.RNN over the example's steps."""
    with pytest.raises(ValueError, match="computes a length fixed at export") as refused:
        describe(user_exports["rnn-dynamo"][1])

    assert "dynamo=False" in str(refused.value) and "\n" not in str(refused.value)


def test_states_keep_their_own_shape_and_batch_axis(user_exports) -> None:
    spec = describe(user_exports["projected"][1])

    assert [(s.input, s.shape, s.batch_axis) for s in spec.states] == [
        ("memory", (-1, 1, 16), 0),
        ("state_in", (2, -1, 8), 1),
    ]


def test_shapes_that_cannot_tell_state_from_data_ask_for_the_sidecar(tmp_path: Path) -> None:
    graph = tmp_path / "cell.onnx"
    export_step_cell(graph)

    with pytest.raises(ValueError, match=r"no data input: name the states in model\.json"):
        describe(graph)
    spec = describe(graph, Sidecar.model_validate({"states": [{"input": "h", "output": "h_next"}]}))

    assert [(t.name, t.batch_axis, t.sequence_axis) for t in spec.data_inputs] == [("x", 0, None)]
    assert spec.streamable  # one step per request: nothing to chunk, its state carried


def test_a_model_without_state_is_served_whole(tmp_path: Path) -> None:
    graph = tmp_path / "stateless.onnx"
    export_stateless(graph)

    spec = describe(graph)

    assert spec.states == [] and not spec.streamable
    assert [(t.name, t.batch_axis, t.sequence_axis) for t in spec.data_outputs] == [("y", 0, 1)]


def test_hints_naming_what_the_graph_lacks_are_refused(user_exports) -> None:
    path = user_exports["gru2"][1]

    with pytest.raises(ValueError, match=r"names 'feature', which the graph lacks.*\['features'"):
        describe(path, Sidecar.model_validate({"inputs": {"feature": {"batch_axis": 0}}}))
    with pytest.raises(ValueError, match="is not dynamic at axis 2"):
        describe(path, Sidecar.model_validate({"inputs": {"features": {"batch_axis": 2}}}))


@pytest.mark.parametrize(
    ("hints", "line"),
    [
        ({"inputs": {"features": {"batch_axis": 0, "sequence_axis": 0}}},
         "model.json: inputs.features: batch_axis and sequence_axis are both 0"),
        ({"outputs": {"out": {"sequence_axis": 2}}},
         "model.json: outputs.out.sequence_axis: output 'out' (of shape [3, 7, 16] for 3 rows "
         "of 7 steps) is not dynamic at axis 2"),
    ],
)  # fmt: skip
def test_hints_that_do_not_fit_the_graph_are_one_line_naming_the_field(
    user_exports, hints: dict, line: str
) -> None:
    with pytest.raises(ValueError) as refused:
        describe(user_exports["gru2-dynamo"][1], Sidecar.model_validate(hints))

    assert str(refused.value) == line  # no pydantic dump


def test_a_sidecar_is_validated_and_its_faults_named(tmp_path: Path) -> None:
    sidecar = tmp_path / "model.json"
    sidecar.write_text(json.dumps({"inputs": {"x": {"batch_axes": 0}}}))
    with pytest.raises(ValueError, match=r"model.json: inputs.x.batch_axes: Extra inputs"):
        read_sidecar(sidecar)
    sidecar.write_text("{not json")
    with pytest.raises(ValueError, match=r"model\.json: Expecting property name"):
        read_sidecar(sidecar)
    sidecar.write_text(json.dumps({"version_policy": {"latest": {"num_versions": 2}, "all": {}}}))
    with pytest.raises(ValueError, match="give exactly one of latest, specific or all"):
        read_sidecar(sidecar)
    assert read_sidecar(tmp_path / "absent.json") is None


@pytest.mark.parametrize(
    ("policy", "selected"),
    [
        ({"latest": {"num_versions": 2}}, [3, 7]),
        ({"specific": {"versions": [1, 7, 9]}}, [1, 7]),
        ({"all": {}}, [1, 3, 7]),
    ],
)
def test_version_policies_select_as_triton_does(policy: dict, selected: list[int]) -> None:
    assert VersionPolicy.model_validate(policy).select([7, 1, 3]) == selected
