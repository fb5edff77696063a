"""The data plane's protocol-neutral views written as Triton's messages, which both front
ends send (gRPC as they are, REST as JSON): ModelConfig and the statistics."""

from __future__ import annotations

import dataclasses

from rnnserve.model.sidecar import Latest, VersionPolicy
from rnnserve.protocol import messages as pb
from rnnserve.service import triton
from rnnserve.service.types import (
    ConfigState,
    ConfigTensor,
    DynamicBatching,
    InferStatistics,
    ModelConfig,
    ModelStatistics,
    SequenceBatching,
    SequenceControl,
)

TAGGER = ModelConfig(
    name="tagger",
    platform="onnxruntime_onnx",
    backend="onnxruntime",
    max_batch_size=16,
    inputs=[ConfigTensor("text", "BYTES", (1,)), ConfigTensor("tokens", "INT64", (-1,), True)],
    outputs=[ConfigTensor("logits", "FP32", (-1, 4))],
    version_policy=VersionPolicy(latest=Latest(num_versions=2)),
    instance_kind="GPU",
    max_queue_delay_us=500,
    sequence_batching=SequenceBatching(
        max_idle_us=30_000_000,
        states=[ConfigState("h0", "hn", "FP32", (2, 8), starts_at_zeros=True)],
        controls=[
            SequenceControl("sequence_id", "SEQUENCE_CORRID", "UINT64"),
            SequenceControl("sequence_start", "SEQUENCE_START", "BOOL"),
        ],
    ),
    dynamic_batching=None,
    parameters={"task": "tagger", "state_batch_axes": "h0:1"},
    instance_count=2,
)
BATCHING = DynamicBatching(preferred_batch_sizes=(4, 8), max_queue_delay_us=100, max_batch_size=16)


def test_tensors_keep_their_dims_and_bytes_is_tritons_string() -> None:
    message = triton.model_config_to_proto(TAGGER)

    assert (message.name, message.platform, message.backend) == (
        "tagger", "onnxruntime_onnx", "onnxruntime",
    )  # fmt: skip
    assert message.max_batch_size == 16
    inputs = [
        (t.name, pb.DataType.Name(t.data_type), list(t.dims), t.optional) for t in message.input
    ]
    assert inputs == [("text", "TYPE_STRING", [1], False), ("tokens", "TYPE_INT64", [-1], True)]
    assert [(t.name, list(t.dims)) for t in message.output] == [("logits", [-1, 4])]
    assert message.version_policy.latest.num_versions == 2
    assert message.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    assert message.instance_group[0].count == 2  # instances_per_device
    assert dict(message.parameters) == {
        "task": pb.ModelParameter(string_value="tagger"),
        "state_batch_axes": pb.ModelParameter(string_value="h0:1"),
    }


def test_sequences_are_tritons_implicit_state_and_sequence_controls() -> None:
    sequence = triton.model_config_to_proto(TAGGER).sequence_batching

    assert sequence.max_sequence_idle_microseconds == 30_000_000
    assert sequence.oldest.max_queue_delay_microseconds == 500
    (state,) = sequence.state
    assert (state.input_name, state.output_name, list(state.dims)) == ("h0", "hn", [2, 8])
    assert [(i.name, i.zero_data, list(i.dims)) for i in state.initial_state] == [
        ("zeros", True, [2, 8])
    ]
    kinds = pb.ModelSequenceBatching.Control
    controls = [
        (c.name, c.control[0].kind, list(c.control[0].bool_false_true))
        for c in sequence.control_input
    ]
    assert controls == [
        ("sequence_id", kinds.CONTROL_SEQUENCE_CORRID, []),
        ("sequence_start", kinds.CONTROL_SEQUENCE_START, [False, True]),
    ]


def test_a_state_without_a_batch_axis_starts_from_no_initial_state() -> None:
    assert TAGGER.sequence_batching is not None
    state = ConfigState("h0", "hn", "FP32", (2, 1, 8), starts_at_zeros=False)
    whole = dataclasses.replace(TAGGER.sequence_batching, states=[state])

    message = triton.model_config_to_proto(dataclasses.replace(TAGGER, sequence_batching=whole))

    assert list(message.sequence_batching.state[0].dims) == [2, 1, 8]
    assert not message.sequence_batching.state[0].initial_state


def test_a_model_without_sequences_writes_its_dynamic_batching() -> None:
    config = dataclasses.replace(TAGGER, sequence_batching=None, dynamic_batching=BATCHING)

    message = triton.model_config_to_proto(config)

    assert list(message.dynamic_batching.preferred_batch_size) == [4, 8]
    assert message.dynamic_batching.max_queue_delay_microseconds == 100
    assert not message.HasField("sequence_batching")


def test_a_model_with_neither_batching_has_neither_scheduling() -> None:
    message = triton.model_config_to_proto(dataclasses.replace(TAGGER, sequence_batching=None))

    assert message.WhichOneof("scheduling_choice") is None


def test_with_sequences_dynamic_batching_is_written_as_parameters() -> None:
    # Triton's scheduling_choice holds one of the two: the sequences keep it.
    message = triton.model_config_to_proto(dataclasses.replace(TAGGER, dynamic_batching=BATCHING))

    assert message.WhichOneof("scheduling_choice") == "sequence_batching"
    parameters = {key: value.string_value for key, value in message.parameters.items()}
    assert parameters["dynamic_batching.preferred_batch_size"] == "4,8"
    assert parameters["dynamic_batching.max_queue_delay_microseconds"] == "100"


def test_statistics_list_each_version_and_its_batch_sizes_in_order() -> None:
    stats = ModelStatistics(
        "sine", "2", last_inference_ms=7, inference_count=5, execution_count=3,
        success=InferStatistics(3, 900),
        batch_stats={4: InferStatistics(1, 40), 1: InferStatistics(2, 20)},
    )  # fmt: skip

    (message,) = triton.model_statistics_to_proto([stats]).model_stats

    assert (message.name, message.version, message.last_inference) == ("sine", "2", 7)
    assert (message.inference_count, message.execution_count) == (5, 3)
    success = message.inference_stats.success
    assert (success.count, success.ns) == (3, 900)
    assert [(b.batch_size, b.compute_infer.count) for b in message.batch_stats] == [(1, 2), (4, 1)]
