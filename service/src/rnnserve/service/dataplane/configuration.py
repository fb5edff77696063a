"""A loaded version's configuration as Triton describes a model (its model_configuration
extension, read by Triton's tools), in the protocol-neutral types of types.py; every front
end writes it as Triton's message through service/triton.py.

With max_batch_size > 0 Triton's dims leave out the batch dimension, and ModelMetadata's
shape is the batch followed by them: Triton's tools shape their requests from the metadata
(perf_analyzer), so the two agree. A text tensor is [batch, 1] in the metadata for that
reason, dims [1] (tasks/validation.py's TEXT_SHAPE; [batch] is accepted too); a tensor of
[batch] alone is written [1], since Triton needs a dimension. A model
whose data tensors have their batch elsewhere than axis 0 (a sequence-first export) gets
max_batch_size 0 and full dims, as Triton writes a model without a batch.

States are described as Triton's implicit state management does, in sequence_batching: a
state per pair (dims without the batch axis, which the parameter `state_batch_axes` names),
starting from zeros; they leave the plain inputs and outputs, so that tools sending every
listed input (perf_analyzer) never send one. The multi-session control tensors are
sequence_batching control inputs.

Dynamic batching (of stateless requests) is Triton's dynamic_batching, whose largest batch
is the parameter `dynamic_batching.max_batch_size`: Triton's max_batch_size is both, here
the largest request. Triton's scheduling is one or the other: for a model with sequences
triton.py writes the other knobs as parameters too.
"""

from __future__ import annotations

from typing import Literal

from rnnserve.model.sidecar import VersionPolicy
from rnnserve.model.spec import ModelSpec
from rnnserve.service.repository import LoadedVersion
from rnnserve.service.sessions.control import (
    CONTROL_INPUTS,
    SEQUENCE_END,
    SEQUENCE_ID,
    SEQUENCE_START,
)
from rnnserve.service.settings import Settings
from rnnserve.service.types import (
    ConfigState,
    ConfigTensor,
    ModelConfig,
    SequenceBatching,
    SequenceControl,
    TensorMetadata,
)

PLATFORM = "onnxruntime_onnx"  # Triton's name for an ONNX Runtime model
BACKEND = "onnxruntime"

# The control inputs Triton has a kind for: none for `sequence_offset`, which ModelMetadata's
# `control_inputs` names.
_CONTROL_KINDS: dict[str, Literal["SEQUENCE_START", "SEQUENCE_END", "SEQUENCE_CORRID"]] = {
    SEQUENCE_START: "SEQUENCE_START",
    SEQUENCE_END: "SEQUENCE_END",
    SEQUENCE_ID: "SEQUENCE_CORRID",
}


def model_config(model: LoadedVersion, settings: Settings, policy: VersionPolicy) -> ModelConfig:
    """Triton's view of one loaded version, under the model's version `policy`."""
    spec, task = model.spec, model.task
    batch_axes = spec.batch_axes()
    batched = not any(batch_axes.get(meta.name, 0) for meta in task.data_inputs + task.data_outputs)
    provider = model.runtime.provider
    parameters = {
        "provider": provider,
        "task": spec.task,
        **({"cell": spec.cell} if spec.cell else {}),
        "state_batch_axes": ",".join(f"{s.input}:{s.batch_axis}" for s in spec.states),
    }
    if model.dynamic_batching is not None:
        # Triton's largest dynamic batch is max_batch_size, here the largest request.
        parameters["dynamic_batching.max_batch_size"] = str(model.dynamic_batching.max_batch_size)
    return ModelConfig(
        name=model.name,
        platform=PLATFORM,
        backend=BACKEND,
        max_batch_size=settings.max_batch_size if batched else 0,
        inputs=[_tensor(meta, batched) for meta in task.data_inputs],
        outputs=[_tensor(meta, batched) for meta in task.data_outputs],
        version_policy=policy,
        instance_kind="GPU" if provider.startswith("CUDA") else "CPU",
        max_queue_delay_us=settings.batch_max_queue_delay_us if settings.batching else 0,
        sequence_batching=_sequence_batching(model, settings, batched),
        dynamic_batching=model.dynamic_batching,
        parameters=parameters,
        instance_count=settings.instances_per_device,
    )


def _sequence_batching(
    model: LoadedVersion, settings: Settings, batched: bool
) -> SequenceBatching | None:
    """A streamable model's sequences: its states, and the control inputs of
    multi-session requests when it takes them; None for a model without sequences."""
    if not model.spec.streamable:
        return None
    controls = [
        SequenceControl(meta.name, _CONTROL_KINDS[meta.name], meta.datatype)
        for meta in CONTROL_INPUTS
        if model.takes_session_rows and meta.name in _CONTROL_KINDS
    ]
    return SequenceBatching(
        max_idle_us=int(settings.session_idle_timeout_s * 1e6),
        states=_states(model.spec, batched),
        controls=controls,
    )


def _states(spec: ModelSpec, batched: bool) -> list[ConfigState]:
    states = []
    for state in spec.states:
        dims = tuple(size for axis, size in enumerate(state.shape) if axis != state.batch_axis)
        states.append(
            ConfigState(
                input=state.input,
                output=state.output,
                datatype=state.datatype,
                dims=dims if batched else state.shape,
                starts_at_zeros=batched,
            )
        )
    return states


def _tensor(meta: TensorMetadata, batched: bool) -> ConfigTensor:
    dims = (meta.shape[1:] or (1,)) if batched else meta.shape
    return ConfigTensor(meta.name, meta.datatype, dims, meta.optional)
