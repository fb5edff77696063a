"""Triton's messages for what the data plane describes in protocol-neutral types: the
ModelConfig of its model_configuration extension and the ModelStatisticsResponse of its
statistics extension, for every front end (gRPC sends them; REST writes them as JSON, as
Triton's REST API does).
"""

from __future__ import annotations

from rnnserve.protocol import messages as pb
from rnnserve.service.types import (
    DynamicBatching,
    InferStatistics,
    ModelConfig,
    ModelStatistics,
    SequenceBatching,
)


def model_config_to_proto(config: ModelConfig) -> pb.ModelConfig:
    message = pb.ModelConfig(
        name=config.name,
        platform=config.platform,
        backend=config.backend,
        version_policy=config.version_policy.model_dump(exclude_none=True),
        max_batch_size=config.max_batch_size,
        input=[
            pb.ModelInput(
                name=t.name, data_type=_type(t.datatype), dims=t.dims, optional=t.optional
            )
            for t in config.inputs
        ],
        output=[
            pb.ModelOutput(name=t.name, data_type=_type(t.datatype), dims=t.dims)
            for t in config.outputs
        ],
        instance_group=[
            pb.ModelInstanceGroup(
                kind=pb.ModelInstanceGroup.Kind.Value(f"KIND_{config.instance_kind}"),
                count=config.instance_count,
            )
        ],
    )
    parameters = dict(config.parameters)
    if config.sequence_batching is not None:
        _sequence_batching(config.sequence_batching, message.sequence_batching)
        message.sequence_batching.oldest.max_queue_delay_microseconds = config.max_queue_delay_us
        if config.dynamic_batching is not None:
            # Triton's scheduling is one or the other: the sequences' is written, and the
            # stateless requests' batching as parameters of the same names.
            parameters.update(_dynamic_batching_parameters(config.dynamic_batching))
    elif config.dynamic_batching is not None:
        _dynamic_batching(config.dynamic_batching, message.dynamic_batching)
    for key, value in parameters.items():
        message.parameters[key].string_value = value
    return message


def _dynamic_batching(batching: DynamicBatching, message: pb.ModelDynamicBatching) -> None:
    """Triton's dynamic_batching. (Its largest batch, Triton's max_batch_size, which here
    is the largest request, is the parameter `dynamic_batching.max_batch_size`.)"""
    message.preferred_batch_size.extend(batching.preferred_batch_sizes)
    message.max_queue_delay_microseconds = batching.max_queue_delay_us
    message.preserve_ordering = False  # every request has its own answer, whenever it comes


def _dynamic_batching_parameters(batching: DynamicBatching) -> dict[str, str]:
    return {
        "dynamic_batching.preferred_batch_size": ",".join(
            str(size) for size in batching.preferred_batch_sizes
        ),
        "dynamic_batching.max_queue_delay_microseconds": str(batching.max_queue_delay_us),
    }


def _sequence_batching(sequence: SequenceBatching, message: pb.ModelSequenceBatching) -> None:
    """States as Triton's implicit state management writes them (an initial state named
    "zeros" where they start from zeros); controls as Triton writes sequence controls,
    with a boolean flag's false and true values."""
    message.max_sequence_idle_microseconds = sequence.max_idle_us
    for state in sequence.states:
        entry = message.state.add(
            input_name=state.input,
            output_name=state.output,
            data_type=_type(state.datatype),
            dims=state.dims,
        )
        if state.starts_at_zeros:
            entry.initial_state.add(
                name="zeros", data_type=entry.data_type, dims=state.dims, zero_data=True
            )
    kinds = pb.ModelSequenceBatching.Control.Kind
    for control in sequence.controls:
        entry = message.control_input.add(name=control.name).control.add(
            kind=kinds.Value(f"CONTROL_{control.kind}"), data_type=_type(control.datatype)
        )
        if control.datatype == "BOOL":
            entry.bool_false_true.extend([False, True])


def _type(datatype: str) -> int:
    # Triton's configuration calls BYTES "STRING".
    return int(pb.DataType.Value("TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"))


def model_statistics_to_proto(stats: list[ModelStatistics]) -> pb.ModelStatisticsResponse:
    return pb.ModelStatisticsResponse(
        model_stats=[
            pb.ModelStatistics(
                name=s.name,
                version=s.version,
                last_inference=s.last_inference_ms,
                inference_count=s.inference_count,
                execution_count=s.execution_count,
                inference_stats=pb.InferStatistics(
                    success=_duration(s.success),
                    fail=_duration(s.fail),
                    queue=_duration(s.queue),
                    compute_input=_duration(s.compute_input),
                    compute_infer=_duration(s.compute_infer),
                    compute_output=_duration(s.compute_output),
                ),
                batch_stats=[
                    pb.InferBatchStatistics(batch_size=size, compute_infer=_duration(batch))
                    for size, batch in sorted(s.batch_stats.items())
                ],
            )
            for s in stats
        ]
    )


def _duration(stats: InferStatistics) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=stats.count, ns=stats.ns)
