"""Every RPC of GRPCInferenceService, against a real server over the tiny repository."""

from __future__ import annotations

import queue

import grpc
import numpy as np
import pytest
from grpc_helpers import MODEL_NAMES, infer_request, outputs_of

from rnnserve.protocol import messages as pb


def test_server_is_live_and_ready(server) -> None:
    assert server.stub.ServerLive(pb.ServerLiveRequest()).live
    assert server.stub.ServerReady(pb.ServerReadyRequest()).ready


def test_server_metadata_lists_the_supported_extensions(server) -> None:
    metadata = server.stub.ServerMetadata(pb.ServerMetadataRequest())

    assert metadata.name == "rnnserve"
    assert metadata.version
    assert {"model_configuration", "statistics", "streaming"} <= set(metadata.extensions)


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_every_default_model_is_ready(server, model: str) -> None:
    assert server.stub.ModelReady(pb.ModelReadyRequest(name=model)).ready
    assert server.stub.ModelReady(pb.ModelReadyRequest(name=model, version="1")).ready


def _tensors(items) -> dict[str, tuple[str, list[int]]]:
    return {t.name: (t.datatype, list(t.shape)) for t in items}


def test_sine_metadata_lists_its_tensors_with_dynamic_dimensions(server) -> None:
    metadata = server.stub.ModelMetadata(pb.ModelMetadataRequest(name="sine-lstm"))

    assert metadata.name == "sine-lstm"
    assert metadata.versions == ["1"]
    assert metadata.platform == "onnxruntime_onnx"
    inputs, outputs = _tensors(metadata.inputs), _tensors(metadata.outputs)
    assert inputs["x"] == ("FP32", [-1, -1, 1])
    assert outputs["y"] == ("FP32", [-1, -1, 1])
    assert set(inputs) == {"x"}  # states and control tensors are named by parameters
    assert set(outputs) == {"y"}
    assert metadata.parameters["state_inputs"].string_param == "h0,c0"
    assert metadata.parameters["provider"].string_param == "CPUExecutionProvider"


@pytest.mark.parametrize("task", ["tagger", "seq2seq"])
def test_text_model_metadata_has_text_in_and_out(server, task: str) -> None:
    metadata = server.stub.ModelMetadata(pb.ModelMetadataRequest(name=f"{task}-gru"))

    # One string per row, as Triton describes it ([batch] is accepted as well).
    assert _tensors(metadata.inputs)["text"] == ("BYTES", [-1, 1])
    assert _tensors(metadata.outputs)["text_out"] == ("BYTES", [-1, 1])
    text = {t.name for t in [*metadata.inputs, *metadata.outputs] if "content_type" in t.parameters}
    assert text == {"text", "text_out"}  # MLServer's mark of text: content_type "str"
    assert metadata.outputs[0].parameters["content_type"].string_param == "str"


def test_seq2seq_lists_its_confidence_in_metadata_and_config(server) -> None:
    metadata = server.stub.ModelMetadata(pb.ModelMetadataRequest(name="seq2seq-gru"))
    config = server.stub.ModelConfig(pb.ModelConfigRequest(name="seq2seq-gru")).config

    assert _tensors(metadata.outputs)["confidence"] == ("FP32", [-1, 1])  # a value per text
    fp32 = pb.DataType.Value("TYPE_FP32")
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output][1] == (
        "confidence",
        fp32,
        [1],
    )


def test_model_config_describes_the_model_as_triton_does(server) -> None:
    config = server.stub.ModelConfig(pb.ModelConfigRequest(name="sine-gru")).config

    assert config.name == "sine-gru"
    assert config.platform == "onnxruntime_onnx"
    assert config.backend == "onnxruntime"
    assert config.max_batch_size > 0
    assert {i.name for i in config.input} >= {"x"}
    assert {o.name for o in config.output} >= {"y"}
    assert config.instance_group[0].count == 1
    assert config.version_policy.HasField("all")  # every version, unless model.json says


def test_model_config_writes_dims_without_the_batch_dimension(server) -> None:
    config = server.stub.ModelConfig(pb.ModelConfigRequest(name="sine-lstm")).config
    dims = {tensor.name: list(tensor.dims) for tensor in config.input}

    assert dims == {"x": [-1, 1]}
    assert config.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU
    text = server.stub.ModelConfig(pb.ModelConfigRequest(name="seq2seq-gru")).config
    assert [list(tensor.dims) for tensor in text.input] == [[1]]


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_model_config_dims_agree_with_the_metadata(server, model: str) -> None:
    """Triton's tools shape their requests from ModelMetadata and read ModelConfig's batch
    size: each tensor's shape is the batch dimension followed by its configured dims."""
    metadata = server.stub.ModelMetadata(pb.ModelMetadataRequest(name=model))
    config = server.stub.ModelConfig(pb.ModelConfigRequest(name=model)).config

    assert config.max_batch_size > 0
    for listed, configured in [(metadata.inputs, config.input), (metadata.outputs, config.output)]:
        shapes = {tensor.name: list(tensor.shape) for tensor in listed}
        assert shapes == {tensor.name: [-1, *tensor.dims] for tensor in configured}


def test_model_config_describes_states_as_triton_implicit_state(server) -> None:
    config = server.stub.ModelConfig(pb.ModelConfigRequest(name="sine-lstm")).config
    hidden = (
        server.stub.ModelMetadata(pb.ModelMetadataRequest(name="sine-lstm"))
        .parameters["hidden_size"]
        .int64_param
    )
    sequence = config.sequence_batching

    assert [(s.input_name, s.output_name, s.data_type, list(s.dims)) for s in sequence.state] == [
        ("h0", "hn", pb.DataType.Value("TYPE_FP32"), [1, hidden]),
        ("c0", "cn", pb.DataType.Value("TYPE_FP32"), [1, hidden]),
    ]
    assert all(s.initial_state[0].zero_data for s in sequence.state)
    assert config.parameters["state_batch_axes"].string_value == "h0:1,c0:1"
    control = pb.ModelSequenceBatching.Control
    controls = {
        c.name: (c.control[0].kind, list(c.control[0].bool_false_true))
        for c in sequence.control_input
    }
    assert controls == {
        "sequence_id": (control.CONTROL_SEQUENCE_CORRID, []),
        "sequence_start": (control.CONTROL_SEQUENCE_START, [False, True]),
        "sequence_end": (control.CONTROL_SEQUENCE_END, [False, True]),
    }
    seq2seq = server.stub.ModelConfig(pb.ModelConfigRequest(name="seq2seq-gru")).config
    assert seq2seq.sequence_batching.state and not seq2seq.sequence_batching.control_input


def test_model_statistics_count_successful_inferences(server) -> None:
    def success_count() -> int:
        stats = server.stub.ModelStatistics(pb.ModelStatisticsRequest(name="sine-rnn"))
        (model_stats,) = stats.model_stats
        return model_stats.inference_stats.success.count

    before = success_count()
    server.stub.ModelInfer(infer_request("sine-rnn", {"x": np.zeros((1, 3, 1), np.float32)}))

    assert success_count() == before + 1


def test_model_statistics_without_a_name_cover_every_model(server) -> None:
    stats = server.stub.ModelStatistics(pb.ModelStatisticsRequest())

    assert {s.name for s in stats.model_stats} == set(MODEL_NAMES)


def test_repository_index_lists_every_model_ready(server) -> None:
    index = server.stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True))

    assert {(m.name, m.version, m.state) for m in index.models} == {
        (name, "1", "READY") for name in MODEL_NAMES
    }


def test_typed_contents_in_give_typed_contents_out(server, reference) -> None:
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(1, 6, 1)
    request = pb.ModelInferRequest(model_name="sine-lstm", id="typed-1")
    request.inputs.add(
        name="x", datatype="FP32", shape=x.shape, contents={"fp32_contents": x.reshape(-1)}
    )

    reply = server.stub.ModelInfer(request)

    assert reply.id == "typed-1"
    assert reply.model_version == "1"
    assert not reply.raw_output_contents  # the representation the request used
    assert len(reply.outputs[0].contents.fp32_contents) == 6
    np.testing.assert_array_equal(outputs_of(reply)["y"], reference.sine("sine-lstm", x))


def test_typed_text_in_gives_typed_text_out(server) -> None:
    request = pb.ModelInferRequest(model_name="tagger-gru")
    request.inputs.add(
        name="text", datatype="BYTES", shape=[1], contents={"bytes_contents": [b"hello"]}
    )
    request.outputs.add(name="text_out")

    reply = server.stub.ModelInfer(request)

    assert not reply.raw_output_contents
    assert list(reply.outputs[0].contents.bytes_contents) == [b"ohlol"]


def test_raw_in_gives_raw_out(server) -> None:
    reply = server.stub.ModelInfer(infer_request("tagger-gru", {"text": ["hello"]}, ["text_out"]))

    assert len(reply.raw_output_contents) == 1
    assert not reply.outputs[0].HasField("contents")


def test_infer_returns_only_the_requested_outputs(server) -> None:
    x = np.zeros((2, 4, 1), np.float32)

    only_state = outputs_of(server.stub.ModelInfer(infer_request("sine-lstm", {"x": x}, ["cn"])))

    assert list(only_state) == ["cn"]
    assert only_state["cn"].shape[1] == 2


def test_states_carry_a_sequence_across_requests(server) -> None:
    x = np.sin(np.linspace(0, 2, 8, dtype=np.float32)).reshape(1, 8, 1)
    whole = outputs_of(server.stub.ModelInfer(infer_request("sine-gru", {"x": x}, ["y"])))["y"]

    first = outputs_of(
        server.stub.ModelInfer(infer_request("sine-gru", {"x": x[:, :5]}, ["y", "hn"]))
    )
    second = outputs_of(
        server.stub.ModelInfer(infer_request("sine-gru", {"x": x[:, 5:], "h0": first["hn"]}, ["y"]))
    )

    np.testing.assert_allclose(
        np.concatenate([first["y"], second["y"]], axis=1), whole, rtol=1e-5, atol=1e-6
    )


def _stream(server, requests: list[pb.ModelInferRequest]) -> list[pb.ModelStreamInferResponse]:
    return list(server.stub.ModelStreamInfer(iter(requests), timeout=60))


def test_stream_answers_each_request_in_order(server, reference) -> None:
    xs = [np.full((1, n, 1), 0.1 * n, np.float32) for n in (1, 2, 3)]
    requests = [infer_request("sine-rnn", {"x": x}, ["y"]) for x in xs]
    for index, request in enumerate(requests):
        request.id = f"step-{index}"

    replies = _stream(server, requests)

    assert [r.infer_response.id for r in replies] == ["step-0", "step-1", "step-2"]
    for reply, x in zip(replies, xs, strict=True):
        assert reply.error_message == ""
        assert reply.infer_response.parameters["triton_final_response"].bool_param
        np.testing.assert_array_equal(
            outputs_of(reply.infer_response)["y"], reference.sine("sine-rnn", x)
        )


def test_stream_reports_an_error_and_stays_open(server) -> None:
    good = infer_request("sine-gru", {"x": np.zeros((1, 2, 1), np.float32)})
    bad = infer_request("sine-gru", {"x": np.zeros((0, 2, 1), np.float32)})

    replies = _stream(server, [good, bad, good])

    assert [bool(r.error_message) for r in replies] == [False, True, False]
    assert "batch size 0" in replies[1].error_message


def test_stream_sends_seq2seq_tokens_as_they_are_decoded(server, reference) -> None:
    replies = _stream(server, [infer_request("seq2seq-lstm", {"text": ["hello"]})])

    finals = [r.infer_response.parameters["triton_final_response"].bool_param for r in replies]
    assert finals[-1] and not any(finals[:-1])
    assert all(r.error_message == "" for r in replies)
    pieces = [outputs_of(r.infer_response)["text_out"][0].decode() for r in replies]
    assert "".join(pieces) == reference.translate("seq2seq-lstm", "hello")


def test_a_streamed_seq2seq_answer_carries_its_confidence_so_far(server, reference) -> None:
    outputs = ["text_out", "confidence"]
    replies = _stream(server, [infer_request("seq2seq-gru", {"text": ["22 nov 2026"]}, outputs)])

    confidences = [outputs_of(r.infer_response)["confidence"][0] for r in replies]
    # Each token multiplies in its probability; the last response's is the whole answer's.
    assert confidences == sorted(confidences, reverse=True)
    _, whole = reference.translate_with_confidence("seq2seq-gru", "22 nov 2026")
    assert confidences[-1] == pytest.approx(whole, rel=1e-5)


def test_streams_run_concurrently(server) -> None:
    """A stream waiting on its client does not hold up another stream."""
    waiting: queue.Queue[pb.ModelInferRequest | None] = queue.Queue()
    idle_stream = server.stub.ModelStreamInfer(iter(waiting.get, None))
    request = infer_request("sine-lstm", {"x": np.zeros((1, 2, 1), np.float32)})
    waiting.put(request)
    next(idle_stream)  # the first stream is open and now idle

    replies = _stream(server, [request])

    assert replies[0].error_message == ""
    waiting.put(None)
    assert list(idle_stream) == []


def test_triton_rpcs_not_served_answer_unimplemented(server) -> None:
    shared_memory = server.channel.unary_unary(
        "/inference.GRPCInferenceService/SystemSharedMemoryStatus",
        request_serializer=lambda _: b"",
        response_deserializer=lambda data: data,
    )
    with pytest.raises(grpc.RpcError) as caught:
        shared_memory(None, timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_model_control_without_its_mode_is_refused_with_the_flag_to_set(server) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        server.stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="sine-rnn"))

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "needs --model-control-mode explicit; this server's is none" in caught.value.details()
