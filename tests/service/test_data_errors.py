"""The model's own data errors are the client's: a token id past an embedding's rows is
refused INVALID_ARGUMENT naming the input, checked before ONNX Runtime where the graph
states the rows (the tagger's vocabulary, a user's Gather on an initializer, read at load:
model/embeddings.py), and where it does not, ORT's own refusal of the values answered
INVALID_ARGUMENT; never INTERNAL, never counted as a server error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from scrape import scrape

from rnnserve.client.client import RnnClient, build_request
from rnnserve.client.errors import InvalidArgument
from rnnserve.model.describe import describe
from rnnserve.model.embeddings import embedding_rows
from rnnserve.model.folder import read_version
from rnnserve.protocol import messages as pb

ROWS = 50
BOUNDED, UNBOUNDED = "embedding", "embedding-unbounded"
PAST = np.array([[3, 2000, 4]], np.int64)  # 2000: past the 50 rows


def embedding_graph(path: Path, bounded: bool) -> Path:
    """ids INT64 [batch, seq] -> Gather of a [50, 4] embedding -> y FP32 [batch, seq, 4]. The
    unbounded one gathers from the initializer's Identity: no row count a reader of the file
    can be sure of, so ORT alone refuses an id past them."""
    table = np.random.default_rng(0).standard_normal((ROWS, 4)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table" if bounded else "copy", "ids"], ["y"])]
    if not bounded:
        nodes.insert(0, helper.make_node("Identity", ["table"], ["copy"]))
    graph = helper.make_graph(
        nodes, "embedding",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 4])],
        [numpy_helper.from_array(table, "table")],
    )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture(scope="module")
def repository(tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("embeddings")
    (root / "tagger-gru").symlink_to(tiny_repository / "tagger-gru")
    embedding_graph(root / BOUNDED / "1" / "model.onnx", bounded=True)
    embedding_graph(root / UNBOUNDED / "1" / "model.onnx", bounded=False)
    return root


@pytest.fixture(scope="module")
def data_server(start_module_server, repository: Path):
    return start_module_server(repository, args=["--log-format", "json", "--log-level", "DEBUG"])


def ids_body(name: str, ids: np.ndarray) -> dict[str, Any]:
    tensor = {"name": name, "datatype": "INT64", "shape": list(ids.shape), "data": ids.tolist()}
    return {"inputs": [tensor]}


def internal_errors(server) -> float:
    samples = scrape(server.metrics_url)
    return sum(value for name, value in samples.items() if 'code="INTERNAL"' in name)


def test_the_embedding_behind_an_input_is_read_off_the_graph(tmp_path: Path) -> None:
    bounded = describe(embedding_graph(tmp_path / "bounded.onnx", bounded=True))
    unbounded = describe(embedding_graph(tmp_path / "unbounded.onnx", bounded=False))

    assert [(t.name, t.embedding_rows) for t in bounded.data_inputs] == [("ids", ROWS)]
    assert [(t.name, t.embedding_rows) for t in unbounded.data_inputs] == [("ids", None)]


@pytest.mark.parametrize("model", ["tagger-gru", "seq2seq-gru"])
def test_the_default_models_embeddings_are_their_vocabularies(tiny_repository, model) -> None:
    """What the tasks check token ids against is what the graphs hold."""
    spec, graphs = read_version(tiny_repository / model / "1")
    found = {role: embedding_rows(path.read_bytes()) for role, path in graphs.items()}
    if model.startswith("tagger"):
        assert found == {"model": {"tokens": len(spec.vocab)}}
    else:
        assert found == {
            "encoder": {"tokens": len(spec.vocab)},
            "decoder": {"token": len(spec.target_vocab)},
        }


@pytest.mark.parametrize(
    ("model", "name"), [(BOUNDED, "ids"), ("tagger-gru", "tokens")]
)  # fmt: skip
def test_an_id_past_the_embedding_is_refused_naming_the_input(data_server, model, name) -> None:
    rows = ROWS if model == BOUNDED else None
    with RnnClient(data_server.address) as client:
        with pytest.raises(InvalidArgument) as refused:
            client.infer(model, {name: PAST})
        with pytest.raises(InvalidArgument, match=f"input '{name}' has token id -1"):
            client.infer(model, {name: -PAST[:, :1] // 3})

    assert refused.value.message.startswith(
        f"input '{name}' has token id 2000; expected ids from 0"
    )
    if rows is not None:
        assert refused.value.message.endswith(f"to {rows - 1}")
    status, body = data_server.rest_infer(model, ids_body(name, PAST))
    assert (status, body["code"]) == (400, "INVALID_ARGUMENT")
    assert body["error"] == refused.value.message


def test_what_only_onnx_runtime_refuses_is_invalid_argument_too(data_server) -> None:
    internal_before = internal_errors(data_server)
    request = build_request(UNBOUNDED, {"ids": PAST})
    request.id = "past-the-rows"
    with RnnClient(data_server.address) as client:
        with pytest.raises(InvalidArgument) as refused:
            client.infer_response_of(request)
        np.testing.assert_equal(client.infer(UNBOUNDED, {"ids": PAST[:, :1]})["y"].shape, (1, 1, 4))

    assert refused.value.message.startswith(
        f"model '{UNBOUNDED}' refused the values of input 'ids': "
    )
    assert "indices element out of data bounds, idx=2000" in refused.value.message
    status, body = data_server.rest_infer(UNBOUNDED, ids_body("ids", PAST))
    assert (status, body["code"], body["error"]) == (400, "INVALID_ARGUMENT", refused.value.message)
    assert internal_errors(data_server) == internal_before == 0
    # ORT's whole message stays in the server's log, at DEBUG, under the request's id.
    logged = [json.loads(line) for line in data_server.log().splitlines() if line.startswith("{")]
    refusals = [line for line in logged if "ONNX Runtime refused" in line["message"]]
    [line] = [line for line in refusals if line.get("request_id") == "past-the-rows"]
    assert line["level"] == "DEBUG" and "Gather node" in line["message"]


def test_the_refusals_are_counted_as_the_clients(data_server) -> None:
    with RnnClient(data_server.address) as client:
        for model in (BOUNDED, UNBOUNDED):
            with pytest.raises(InvalidArgument):
                client.infer(model, {"ids": PAST})

    (stats,) = data_server.stub.ModelStatistics(
        pb.ModelStatisticsRequest(name=UNBOUNDED)
    ).model_stats
    samples = scrape(data_server.metrics_url)
    refused = [
        name for name, value in samples.items()
        if name.startswith("rnnserve_requests_total") and UNBOUNDED in name and value
    ]  # fmt: skip
    assert refused and all('code="INVALID_ARGUMENT"' in name or 'code="OK"' in name
                           for name in refused)  # fmt: skip
    assert stats.inference_stats.fail.count >= 1  # a failed run, in Triton's statistics


@pytest.mark.slow  # perf_analyzer is installed on first use
@pytest.mark.parametrize(
    ("model", "shape"), [("tagger-gru", "tokens:8"), (BOUNDED, "ids:8"), (UNBOUNDED, "ids:8")]
)  # fmt: skip
def test_perf_analyzers_random_data_is_refused_as_the_clients(
    data_server, perf_analyzer, model: str, shape: str
) -> None:
    """perf_analyzer's default random data (INT64 ids of any value; for a tagger, random
    `text` beside `tokens`, as it sends every input listed) is the client's mistake:
    INVALID_ARGUMENT, never INTERNAL."""
    done = perf_analyzer.run(
        ["-m", model, "-u", data_server.address, "-i", "grpc", "--shape", shape,
         "--measurement-mode", "count_windows", "--measurement-request-count", "10",
         "--max-trials", "1"],
    )  # fmt: skip

    samples = scrape(data_server.metrics_url)
    infer = {
        name: value for name, value in samples.items()
        if name.startswith("rnnserve_requests_total") and f'model="{model}"' in name
        and 'rpc="ModelInfer"' in name and value
    }  # fmt: skip
    assert done.returncode != 0, done.stdout + done.stderr  # refused at once
    assert [name for name in infer if 'code="OK"' not in name] == [
        f'rnnserve_requests_total{{code="INVALID_ARGUMENT",model="{model}",protocol="grpc",'
        'rpc="ModelInfer",version="1"}'
    ]
