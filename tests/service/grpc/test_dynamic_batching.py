"""Dynamic batching of stateless requests over the wire (`--dynamic-batching`, or a model's
model.json): concurrent requests of a version share ORT runs (ModelStatistics' batch_stats
say so), and every answer is bit for bit the one the same server gives the request alone
(a request that finds nothing queued and nothing running runs at once, alone): ONNX
Runtime's CPU kernels compute each row of a batch as they compute it alone. Requests of
different lengths never share a run (nothing is padded); a request its task refuses never
joins a batch, and fails alone."""

from __future__ import annotations

import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_helpers import infer_request, outputs_of
from model_statistics import batched_runs

from rnnserve.export.importer import import_graph
from rnnserve.protocol import messages as pb

DELAY_US = 50_000  # long enough for requests sent together to meet on a busy machine
MAX_BATCH = 8
# Rounds of concurrent requests until some share a run: a request that finds nothing
# queued and nothing running runs at once, so on a busy machine a round may meet no other.
ROUNDS = 30
DEFAULT_MODELS = ("sine-lstm", "sine-gru", "tagger-gru", "seq2seq-lstm")
OWN_BATCHING = {"preferred_batch_size": [2, 4], "max_queue_delay_microseconds": DELAY_US,
                "max_batch_size": 4}  # fmt: skip

Request = pb.ModelInferRequest
Answer = dict[str, np.ndarray]


@pytest.fixture(scope="module")
def batching_repository(
    tiny_repository: Path, user_exports: dict, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Four default models; a user's model as exported (sequence first: its batch on axis
    1); another, bidirectional (no sessions), imported with `rnnserve import` and given
    knobs of its own in model.json."""
    root = tmp_path_factory.mktemp("dynamic-batching")
    for name in DEFAULT_MODELS:
        (root / name).symlink_to(tiny_repository / name)
    shutil.copytree(user_exports["lstm-seq-first"][1].parent, root / "lstm-seq-first" / "1")
    import_graph(user_exports["bilstm"][1], root, "bilstm")
    sidecar = {"dynamic_batching": OWN_BATCHING}
    (root / "bilstm" / "model.json").write_text(json.dumps(sidecar))
    return root


@pytest.fixture(scope="module")
def batching_server(start_module_server, batching_repository: Path):
    """Every batch runs in a compute thread (--inline-max-bytes 0): requests arriving while
    one runs gather for the next. (A small batch run on the event loop blocks it: arrivals
    wait, and each finds the batcher idle and runs alone, as small requests mostly do.)"""
    return start_module_server(
        batching_repository,
        args=["--dynamic-batching", "--dynamic-batch-max-queue-delay-us", str(DELAY_US),
              "--dynamic-batch-max-size", str(MAX_BATCH), "--inline-max-bytes", "0"],
    )  # fmt: skip


def sine(length: int, seed: int) -> Request:
    x = np.random.default_rng(seed).standard_normal((1, length, 1), np.float32)
    return infer_request("sine-lstm", {"x": x}, ["y", "hn", "cn"])


def requests_for(model: str, user_exports: dict) -> list[Request]:
    """Twelve requests, of two lengths (two rows in some), every output asked for."""
    rng = np.random.default_rng(7)
    if model.startswith("sine"):
        shapes = [(1 + i % 2, 5 + 3 * (i % 2), 1) for i in range(12)]
        xs = [rng.standard_normal(shape, np.float32) for shape in shapes]
        return [infer_request(model, {"x": x}, ["y", "hn", "cn"][: 2 + model.endswith("lstm")])
                for x in xs]  # fmt: skip
    if model.startswith("tagger"):
        words = ["hello", "holle", "lole", "hole", "ohhel", "leho"] * 2  # its vocabulary: ehlo
        return [infer_request(model, {"text": [w]}, ["text_out", "logits"]) for w in words]
    if model.startswith("seq2seq"):
        sources = ["22 nov 2026", "3/4/99", "22 dec 2025", "5/6/01", "1 jan 2000", "7/8/02"] * 2
        return [infer_request(model, {"text": [s]}, ["text_out", "confidence"]) for s in sources]
    export = user_exports[model][0]
    requests = []
    for i in range(12):
        x = rng.standard_normal((1, 6 + 4 * (i % 2), export.features), np.float32)
        x = x if export.batch_first else x.transpose(1, 0, 2).copy()
        requests.append(infer_request(model, {export.data_input: x}))
    return requests


def answers(server, requests: list[Request], together: bool) -> list[Answer | grpc.RpcError]:
    """Each request's answer (or error): one at a time, or all sent at once."""
    if not together:
        return [call(server, request) for request in requests]
    start = threading.Barrier(len(requests))

    def send(request: Request) -> Answer | grpc.RpcError:
        start.wait()
        return call(server, request)

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(send, requests))


def call(server, request: Request) -> Answer | grpc.RpcError:
    try:
        return outputs_of(server.stub.ModelInfer(request, timeout=60))
    except grpc.RpcError as error:
        return error


def assert_same(got: Answer | grpc.RpcError, alone: Answer | grpc.RpcError) -> None:
    assert isinstance(got, dict) and isinstance(alone, dict), (got, alone)
    assert got.keys() == alone.keys()
    for name, value in alone.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


@pytest.mark.parametrize("model", [*DEFAULT_MODELS, "lstm-seq-first", "bilstm"])
def test_concurrent_requests_share_runs_and_answer_as_each_alone(
    batching_server, user_exports, model: str
) -> None:
    requests = requests_for(model, user_exports)
    alone = answers(batching_server, requests, together=False)
    runs_before = batched_runs(batching_server, model)

    for _ in range(ROUNDS):
        together = answers(batching_server, requests, together=True)
        for got, expected in zip(together, alone, strict=True):
            assert_same(got, expected)
        if batched_runs(batching_server, model) > runs_before:
            break
    assert batched_runs(batching_server, model) > runs_before


def test_a_refused_request_fails_alone_and_its_batch_mates_are_answered(batching_server) -> None:
    requests = [sine(6, seed) for seed in range(MAX_BATCH)]
    x = np.zeros((1, 6, 3), np.float32)  # three features where the model takes one
    requests[3] = infer_request("sine-lstm", {"x": x})
    alone = answers(batching_server, requests, together=False)
    runs_before = batched_runs(batching_server, "sine-lstm")

    for _ in range(ROUNDS):
        together = answers(batching_server, requests, together=True)
        refused = together[3]
        assert isinstance(refused, grpc.RpcError)
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT and "x" in refused.details()
        for index, (got, expected) in enumerate(zip(together, alone, strict=True)):
            if index != 3:
                assert_same(got, expected)
        if batched_runs(batching_server, "sine-lstm") > runs_before:
            break
    assert batched_runs(batching_server, "sine-lstm") > runs_before


def test_streamed_translations_decode_in_shared_runs_as_each_alone(batching_server) -> None:
    """ModelStreamInfer without a session: seq2seq's token by token answers, whose
    decoding steps share runs with those of other streams."""
    requests = requests_for("seq2seq-lstm", {})
    alone = answers(batching_server, requests, together=False)
    runs_before = batched_runs(batching_server, "seq2seq-lstm")

    def translate(request: Request) -> str:
        start.wait()
        replies = list(batching_server.stub.ModelStreamInfer(iter([request]), timeout=60))
        assert all(reply.error_message == "" for reply in replies)
        return "".join(outputs_of(r.infer_response)["text_out"][0].decode() for r in replies)

    for _ in range(ROUNDS):
        start = threading.Barrier(len(requests))
        with ThreadPoolExecutor(len(requests)) as pool:
            streamed = list(pool.map(translate, requests))
        for text, expected in zip(streamed, alone, strict=True):
            assert isinstance(expected, dict)
            assert text == expected["text_out"][0].decode()
        if batched_runs(batching_server, "seq2seq-lstm") > runs_before:
            break
    assert batched_runs(batching_server, "seq2seq-lstm") > runs_before


def test_config_reports_the_flags_knobs_or_the_models_own(batching_server) -> None:
    def config(model: str) -> pb.ModelConfig:
        request = pb.ModelConfigRequest(name=model)
        return batching_server.stub.ModelConfig(request).config

    own = config("bilstm")  # no sessions: Triton's dynamic_batching itself
    assert own.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert list(own.dynamic_batching.preferred_batch_size) == [2, 4]
    assert own.dynamic_batching.max_queue_delay_microseconds == DELAY_US
    assert own.parameters["dynamic_batching.max_batch_size"].string_value == "4"

    sine_config = config("sine-lstm")  # sequences hold Triton's scheduling: parameters say it
    assert sine_config.WhichOneof("scheduling_choice") == "sequence_batching"
    parameters = {key: value.string_value for key, value in sine_config.parameters.items()}
    assert parameters["dynamic_batching.max_queue_delay_microseconds"] == str(DELAY_US)
    assert parameters["dynamic_batching.preferred_batch_size"] == ""
    assert parameters["dynamic_batching.max_batch_size"] == str(MAX_BATCH)
