"""Triton's dialect of the protocol: the model configuration a ModelConfig call returns
(Triton's model_configuration extension, read by Triton's tools) and the flag that ends
a request's responses on a stream (its streaming extension)."""

from __future__ import annotations

from typing import Any

from rnnserve.model.sidecar import VersionPolicy
from rnnserve.protocol import messages as pb
from rnnserve.service.dataplane import DataPlane
from rnnserve.service.dataplane.plane import PLATFORM
from rnnserve.service.repository import LoadedVersion
from rnnserve.service.sessions.control import (
    CONTROL_INPUTS,
    SEQUENCE_END,
    SEQUENCE_ID,
    SEQUENCE_START,
)
from rnnserve.service.settings import Settings

FINAL_RESPONSE = "triton_final_response"


def mark_final(message: Any, final: bool) -> None:
    """Says on a streamed ModelInferResponse whether it is its request's last."""
    message.parameters[FINAL_RESPONSE].bool_param = final


def model_config_of(dataplane: DataPlane, name: str, version: str = "") -> Any:
    """The ModelConfigResponse of a model version ("" for the newest) the data plane holds,
    for every front end (REST writes it as JSON)."""
    model = dataplane.model(name, version)
    return model_config(model, dataplane.settings, dataplane.repository.policy(name))


def model_config(model: LoadedVersion, settings: Settings, policy: VersionPolicy) -> Any:
    """Triton's view of the model, as a ModelConfigResponse.

    With max_batch_size > 0 Triton's dims leave out the batch dimension, and a [batch]
    tensor is written [1] (Triton's convention, which we accept on the wire as [batch, 1]).
    A model whose data tensors have their batch elsewhere than axis 0 (a sequence-first
    export) gets max_batch_size 0 and full dims, as Triton writes a model without a batch.

    States are described as Triton's implicit state management does, in sequence_batching:
    a `state` entry per pair (dims without the batch axis, which the parameter
    `state_batch_axes` names), starting from zeros; they leave the plain inputs and outputs,
    so that tools sending every listed input (perf_analyzer) never send one. The
    multi-session control tensors are sequence_batching control inputs.
    """
    spec, task = model.spec, model.task
    provider = model.runtime.provider
    batch_axes = spec.batch_axes()
    batched = not any(batch_axes.get(meta.name, 0) for meta in task.data_inputs + task.data_outputs)
    max_batch_size = settings.max_batch_size if batched else 0
    config = pb.ModelConfig(
        name=model.name,
        platform=PLATFORM,
        backend="onnxruntime",
        version_policy=policy.model_dump(exclude_none=True),
        max_batch_size=max_batch_size,
        input=[
            pb.ModelInput(
                name=t.name,
                data_type=_type(t.datatype),
                dims=_dims(t.shape, batched),
                optional=t.optional,
            )
            for t in task.data_inputs
        ],
        output=[
            pb.ModelOutput(name=t.name, data_type=_type(t.datatype), dims=_dims(t.shape, batched))
            for t in task.data_outputs
        ],
        instance_group=[
            pb.ModelInstanceGroup(
                kind=pb.ModelInstanceGroup.KIND_GPU
                if provider.startswith("CUDA")
                else pb.ModelInstanceGroup.KIND_CPU,
                count=1,
            )
        ],
    )
    queue_delay_us = settings.batch_max_queue_delay_us if settings.batching else 0
    if spec.streamable:
        sequence = config.sequence_batching
        sequence.max_sequence_idle_microseconds = int(settings.session_idle_timeout_s * 1e6)
        sequence.oldest.max_queue_delay_microseconds = queue_delay_us
        for state in spec.states:
            dims = [size for axis, size in enumerate(state.shape) if axis != state.batch_axis]
            entry = sequence.state.add(
                input_name=state.input,
                output_name=state.output,
                data_type=_type(state.datatype),
                dims=dims if batched else state.shape,
            )
            if batched:
                entry.initial_state.add(
                    name="zeros", data_type=entry.data_type, dims=dims, zero_data=True
                )
        if model.takes_session_rows:
            _control_inputs(sequence)
    else:
        config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
    parameters = {
        "provider": provider,
        "task": spec.task,
        **({"cell": spec.cell} if spec.cell else {}),
        "state_batch_axes": ",".join(f"{s.input}:{s.batch_axis}" for s in spec.states),
    }
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return pb.ModelConfigResponse(config=config)


def _control_inputs(sequence: Any) -> None:
    """The tensors that make each batch row one step of its own session, as Triton writes
    sequence controls: start and end flags (false, true), the correlation id. Triton has no
    kind of control for `sequence_offset`: ModelMetadata's `control_inputs` names it."""
    control = pb.ModelSequenceBatching.Control
    kinds = {
        SEQUENCE_START: control.CONTROL_SEQUENCE_START,
        SEQUENCE_END: control.CONTROL_SEQUENCE_END,
        SEQUENCE_ID: control.CONTROL_SEQUENCE_CORRID,
    }
    for meta in (meta for meta in CONTROL_INPUTS if meta.name in kinds):
        entry = sequence.control_input.add(name=meta.name).control.add(
            kind=kinds[meta.name], data_type=_type(meta.datatype)
        )
        if meta.datatype == "BOOL":
            entry.bool_false_true.extend([False, True])


def _dims(shape: tuple[int, ...], batched: bool) -> tuple[int, ...]:
    if not batched:
        return shape
    return shape[1:] or (1,)


def _type(datatype: str) -> int:
    # Triton's config calls BYTES "STRING".
    return pb.DataType.Value("TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}")
