"""Users' own exports served over the wire (tests/user_exports.py): imported with
`rnnserve import`, or dropped into the repository as exported, described at load. Each
answers whole sequences as ONNX Runtime does, and a sequence sent in pieces through a
session answers as the whole sequence does.

The matrix (slow): every kind of own model, exported by both of torch's exporters, is
either imported and answers as PyTorch does (in pieces as whole, where it streams), or
refused at import in one line that says the fix."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from grpc_helpers import failures_and_successes
from user_exports import MATRIX, Case

from rnnserve.bench.perf_analyzer import ANY_SPREAD, sequence_arguments
from rnnserve.client.client import RnnClient
from rnnserve.client.errors import InferenceError
from rnnserve.export.errors import VerificationError
from rnnserve.export.importer import describe_import, import_graph
from rnnserve.protocol import messages as pb

IMPORTED = ("gru2", "projected", "bilstm")  # `rnnserve import`
# No metadata: described when the server loads it. gru2-dynamo as torch's dynamo exporter
# writes it: weights in model.onnx.data, `out` declared with the example's length.
AS_EXPORTED = ("lstm-seq-first", "gru2-dynamo")
STREAMABLE = ("gru2", "projected", "lstm-seq-first", "gru2-dynamo")


@pytest.fixture(scope="module")
def own_repository(user_exports, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("own-models")
    for name in IMPORTED:
        import_graph(user_exports[name][1], root, name)
    for name in (*AS_EXPORTED, "rnn-dynamo"):  # with the files beside the graph
        shutil.copytree(user_exports[name][1].parent, root / name / "1")
    # A sidecar that does not validate: that model is unavailable, never the server.
    (root / "misdescribed" / "1").mkdir(parents=True)
    shutil.copyfile(user_exports["gru2"][1], root / "misdescribed" / "1" / "model.onnx")
    (root / "misdescribed" / "model.json").write_text(json.dumps({"states": [{"input": "x"}]}))
    return root


@pytest.fixture(scope="module")
def own_server(start_module_server, own_repository: Path):
    return start_module_server(own_repository)


@pytest.fixture
def own_client(own_server):
    with RnnClient(own_server.address) as client:
        yield client


def sequence(export, steps: int, seed: int) -> np.ndarray:
    """One row of `steps` random steps, in the export's layout."""
    x = np.random.default_rng(seed).standard_normal((1, steps, export.features), np.float32)
    return x if export.batch_first else x.transpose(1, 0, 2).copy()


def onnx_runtime(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The export run directly, its states at zeros."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for node in session.get_inputs():
        if node.name not in feeds:
            shape = [1 if isinstance(d, str) else d for d in node.shape]
            feeds[node.name] = np.zeros(shape, np.float32)
    names = [node.name for node in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


@pytest.mark.parametrize("name", [*IMPORTED, *AS_EXPORTED])
def test_whole_sequences_are_answered_as_onnx_runtime_does(user_exports, own_client, name):
    export, path = user_exports[name]
    x = sequence(export, 12, seed=1)

    served = own_client.infer(name, {export.data_input: x})

    expected = onnx_runtime(path, {export.data_input: x})
    assert set(served) == set(expected)  # every output, under the export's own names
    for output, value in expected.items():
        np.testing.assert_allclose(served[output], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", STREAMABLE)
def test_a_session_answers_as_the_whole_sequence(user_exports, own_client, name) -> None:
    export = user_exports[name][0]
    x = sequence(export, 20, seed=2)
    whole = own_client.infer(name, {export.data_input: x})
    axis = export.sequence_axis

    pieces = []
    bounds = [0, 3, 4, 11, 20]
    for index, (start, stop) in enumerate(itertools.pairwise(bounds)):
        piece = np.take(x, range(start, stop), axis=axis)
        parameters = {"sequence_id": f"{name}-session", "sequence_start": index == 0,
                      "sequence_end": stop == 20}  # fmt: skip
        pieces.append(own_client.infer(name, {export.data_input: piece}, parameters=parameters))

    joined = np.concatenate([p[export.data_output] for p in pieces], axis=axis)
    np.testing.assert_allclose(joined, whole[export.data_output], rtol=1e-5, atol=1e-6)
    for state_out in export.states.values():  # the final states, as the last piece left them
        np.testing.assert_allclose(pieces[-1][state_out], whole[state_out], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["lstm-seq-first", "projected"])
def test_a_retried_multi_session_step_is_answered_again_in_the_models_layout(
    user_exports, own_client, name
) -> None:
    """Two sessions step in one request with offsets; the second step sent again is answered
    again (its outputs and states put back in the rows of the graph's own layout), and the
    pieces still equal the whole sequences."""
    export = user_exports[name][0]
    x = np.concatenate([sequence(export, 9, seed) for seed in (3, 4)], axis=export.batch_axis)
    whole = own_client.infer(name, {export.data_input: x})
    first, second = (
        np.take(x, range(a, b), axis=export.sequence_axis) for a, b in ((0, 4), (4, 9))
    )
    ids = [f"{name}-rows-1", f"{name}-rows-2"]

    own_client.step_sessions(name, ids, {export.data_input: first}, start=True, offsets=[0, 0])
    answered, errors = own_client.step_sessions(name, ids, {export.data_input: second},
                                                offsets=[4, 4])  # fmt: skip
    retried, _ = own_client.step_sessions(name, ids, {export.data_input: second}, offsets=[4, 4])

    assert errors == ["", ""] and list(answered["sequence_offset"]) == [9, 9]
    for output, value in answered.items():
        np.testing.assert_array_equal(retried[output], value)
    tail = np.take(whole[export.data_output], range(4, 9), axis=export.sequence_axis)
    np.testing.assert_allclose(answered[export.data_output], tail, rtol=1e-5, atol=1e-6)
    for state_out in export.states.values():
        np.testing.assert_allclose(answered[state_out], whole[state_out], rtol=1e-5, atol=1e-6)


def test_a_session_may_start_from_a_state_in_the_graphs_layout(user_exports, own_client) -> None:
    export = user_exports["projected"][0]
    x = sequence(export, 6, seed=3)
    start = {
        "memory": np.full((1, 1, 16), 0.3, np.float32),  # this state's batch is axis 0
        "state_in": np.full((2, 1, 8), -0.2, np.float32),
    }
    whole = own_client.infer("projected", {"features": x, **start})

    first = own_client.infer(
        "projected", {"features": x[:, :2], **start},
        parameters={"sequence_id": 41, "sequence_start": True},
    )  # fmt: skip
    rest = own_client.infer(
        "projected", {"features": x[:, 2:]}, parameters={"sequence_id": 41, "sequence_end": True}
    )

    joined = np.concatenate([first["logits"], rest["logits"]], axis=1)
    np.testing.assert_allclose(joined, whole["logits"], rtol=1e-5, atol=1e-6)


def test_a_bidirectional_export_refuses_sessions_with_the_reason(user_exports, own_client) -> None:
    x = sequence(user_exports["bilstm"][0], 5, seed=4)

    with pytest.raises(InferenceError) as refused:
        own_client.infer("bilstm", {"x": x}, parameters={"sequence_id": 5, "sequence_start": True})

    assert refused.value.code == "FAILED_PRECONDITION"
    assert "is bidirectional and cannot stream: its backward direction needs the whole" in str(
        refused.value
    )


def test_wrong_requests_are_named_by_the_models_own_tensors(user_exports, own_client) -> None:
    export = user_exports["gru2"][0]
    wide = np.zeros((1, 4, export.features + 1), np.float32)

    with pytest.raises(InferenceError, match=r"input 'features' has axis 2 of size 5; expected 4"):
        own_client.infer("gru2", {"features": wide})
    with pytest.raises(InferenceError, match=r"input 'x'.*expected inputs from \['features'"):
        own_client.infer("gru2", {"x": wide})
    with pytest.raises(InferenceError, match=r"input 'state_in' has shape \[2, 2, 16\]"):
        own_client.infer(
            "gru2", {"features": wide[..., :4], "state_in": np.zeros((2, 2, 16), np.float32)}
        )


def test_metadata_and_config_speak_the_models_names(own_server) -> None:
    metadata = own_server.stub.ModelMetadata(pb.ModelMetadataRequest(name="lstm-seq-first"))
    config = own_server.stub.ModelConfig(pb.ModelConfigRequest(name="lstm-seq-first")).config

    assert [(t.name, list(t.shape)) for t in metadata.inputs] == [("x", [-1, -1, 3])]
    assert metadata.parameters["state_inputs"].string_param == "h0,c0"
    assert metadata.parameters["task"].string_param == "recurrent"
    # Sequence-first: the batch is not axis 0, so no Triton batch dimension, full dims.
    assert config.max_batch_size == 0
    assert [list(t.dims) for t in config.input] == [[-1, -1, 3]]
    assert [(s.input_name, list(s.dims)) for s in config.sequence_batching.state] == [
        ("h0", [1, -1, 12]), ("c0", [1, -1, 12]),
    ]  # fmt: skip


def test_a_wrong_sidecar_makes_its_model_unavailable_with_the_reason(own_server) -> None:
    index = own_server.stub.RepositoryIndex(pb.RepositoryIndexRequest())
    states = {(m.name, m.version): (m.state, m.reason) for m in index.models}

    state, reason = states[("misdescribed", "1")]
    assert state == "UNAVAILABLE"
    assert "misdescribed/model.json: states.0.output: Field required" in reason
    assert all(states[(name, "1")][0] == "READY" for name in [*IMPORTED, *AS_EXPORTED])


def test_a_graph_computing_the_examples_length_is_unavailable_with_the_fix(own_server) -> None:
    """torch's dynamo exporter unrolls an nn.RNN over the example's steps: the graph runs
    at that length only, and is refused at load in the line `rnnserve import` refuses it."""
    index = own_server.stub.RepositoryIndex(pb.RepositoryIndexRequest())
    (entry,) = [m for m in index.models if m.name == "rnn-dynamo"]

    assert entry.state == "UNAVAILABLE"
    assert "computes a length fixed at export" in entry.reason
    assert "dynamo=False" in entry.reason and "\n" not in entry.reason


@pytest.mark.slow  # perf_analyzer is installed on first use, then loads the server
@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("gru2", "features:1,4"),  # Triton dims leave out the batch: [steps, features]
        ("lstm-seq-first", "x:1,1,3"),  # no Triton batch (max_batch_size 0): [steps, batch, 3]
    ],
)
def test_perf_analyzer_runs_a_sequence_benchmark_of_a_users_model(
    own_server, perf_analyzer, name: str, shape: str
) -> None:
    failed, succeeded = failures_and_successes(own_server, name)
    arguments = sequence_arguments(
        own_server.address,
        name,
        ["--shape", shape],
        window_requests=50,
        stability_percentage=ANY_SPREAD,
    )

    done = perf_analyzer.run(arguments)

    assert done.returncode == 0, done.stdout + done.stderr
    after_failed, after_succeeded = failures_and_successes(own_server, name)
    assert after_failed == failed and after_succeeded - succeeded >= 150


# The matrix of own models (slow: exported once per session, a few minutes) ------------


def refusal(case: Case) -> str:
    """The gist of the line `rnnserve import` refuses a case with; "" for one it imports.
    torch's dynamo exporter fixes the example's length in an nn.RNN (it unrolls it) and in
    a sequence-first GRU or LSTM (a Reshape to it)."""
    fixed = case.dynamo and (case.cell == "RNN" or not case.batch_first)
    return "computes a length fixed at export" if fixed else ""


SERVED = [pytest.param(case, id=case.name) for case in MATRIX if not refusal(case)]
# The first test of the matrix exports it when the cache lacks it (tests/model_cache.py):
# 120 torch exports, which outlast pytest's 600 s on a busy machine.
EXPORTS_MATRIX = pytest.mark.timeout(2400)


@pytest.fixture(scope="module")
def matrix_imports(own_model_matrix, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Every case through `rnnserve import`: the repository, and per case what the import
    printed, or the one line it refused the case with."""
    root = tmp_path_factory.mktemp("matrix-repository")
    said = {}
    for name, export in own_model_matrix.items():
        try:
            said[name] = describe_import(import_graph(export.path, root, name))
        except VerificationError as error:
            said[name] = f"refused: {error}"
    return root, said


@pytest.fixture(scope="module")
def matrix_client(start_module_server, matrix_imports):
    server = start_module_server(matrix_imports[0])
    with RnnClient(server.address) as client:
        yield client


def pytorch(export, inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The export's module run by PyTorch: its outputs under the graph's names."""
    with torch.no_grad():
        values = export.module(*inputs.values())
    values = values if isinstance(values, tuple) else (values,)
    names = ["out", *export.case.states.values()]
    return {name: value.numpy() for name, value in zip(names, values, strict=True)}


@pytest.mark.slow
@EXPORTS_MATRIX
@pytest.mark.parametrize("case", [pytest.param(case, id=case.name) for case in MATRIX])
def test_an_own_model_is_imported_saying_what_it_serves_or_refused_in_one_line(
    matrix_imports, case: Case
) -> None:
    said = matrix_imports[1][case.name]

    if refusal(case):
        assert said.startswith("refused: ") and "\n" not in said
        assert refusal(case) in said and "dynamo=False" in said  # the cause and the fix
    else:
        assert said.startswith("imported ")
        streams = "serves  sequences in pieces" in said
        assert streams is case.streams
        assert "serves  multi-session rows" in said if streams else "refuses sequences" in said


@pytest.mark.slow
@EXPORTS_MATRIX
@pytest.mark.parametrize("case", SERVED)
def test_an_imported_own_model_answers_as_pytorch(own_model_matrix, matrix_client, case) -> None:
    export = own_model_matrix[case.name]
    inputs = case.inputs(rows=3, steps=9, seed=5)  # states too, where the graph takes them

    served = matrix_client.infer(case.name, {name: v.numpy() for name, v in inputs.items()})

    expected = pytorch(export, inputs)
    assert set(served) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(served[name], value, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.slow
@EXPORTS_MATRIX
@pytest.mark.parametrize("case", [p for p in SERVED if p.values[0].streams])
def test_an_own_model_that_streams_answers_in_pieces_as_whole(
    own_model_matrix, matrix_client, case
) -> None:
    inputs = case.inputs(rows=1, steps=10, seed=6)
    if case.kind == "lengths":  # every step of each piece is valid
        inputs["lengths"] = torch.tensor([10])
    whole = pytorch(own_model_matrix[case.name], inputs)

    pieces = []
    for index, (start, stop) in enumerate(itertools.pairwise([0, 3, 4, 10])):
        piece = {case.data_input: np.take(inputs[case.data_input].numpy(), range(start, stop),
                                          axis=case.sequence_axis)}  # fmt: skip
        if case.kind == "lengths":
            piece["lengths"] = np.array([stop - start])
        if index == 0:  # the session starts from the states sent with its first piece
            piece |= {name: inputs[name].numpy() for name in case.states}
        parameters = {"sequence_id": case.name, "sequence_start": index == 0,
                      "sequence_end": stop == 10}  # fmt: skip
        pieces.append(matrix_client.infer(case.name, piece, parameters=parameters))

    joined = (
        pieces[-1]["out"]  # one output per sequence: the last piece's
        if case.kind == "per-sequence"
        else np.concatenate([p["out"] for p in pieces], axis=case.sequence_axis)
    )
    np.testing.assert_allclose(joined, whole["out"], rtol=1e-5, atol=1e-5)
    for state_out in case.states.values():
        np.testing.assert_allclose(pieces[-1][state_out], whole[state_out], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@EXPORTS_MATRIX
@pytest.mark.parametrize("case", [p for p in SERVED if not p.values[0].streams])
def test_an_own_model_that_cannot_stream_refuses_a_session_saying_why(matrix_client, case) -> None:
    inputs = case.inputs(rows=1, steps=4, seed=7)
    data = {name: inputs[name].numpy() for name in case.data_inputs}

    with pytest.raises(InferenceError) as refused:
        matrix_client.infer(case.name, data, parameters={"sequence_id": 9, "sequence_start": True})

    assert refused.value.code == "FAILED_PRECONDITION"
    why = "is bidirectional and cannot stream" if case.directions == 2 else "keeps no state"
    assert why in str(refused.value)
