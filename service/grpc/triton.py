"""Triton's dialect of the protocol: the model configuration a ModelConfig call returns
(Triton's model_configuration extension, read by Triton's tools) and the flag that ends
a request's responses on a stream (its streaming extension)."""

from __future__ import annotations

from typing import Any

from rnnserve.protocol import messages as pb
from rnnserve.service.dataplane.plane import PLATFORM
from rnnserve.service.repository import LoadedVersion
from rnnserve.service.settings import Settings
from rnnserve.service.types import TensorMetadata

FINAL_RESPONSE = "triton_final_response"


def mark_final(message: Any, final: bool) -> None:
    """Says on a streamed ModelInferResponse whether it is its request's last."""
    message.parameters[FINAL_RESPONSE].bool_param = final


def model_config(model: LoadedVersion, settings: Settings) -> Any:
    """Triton's view of the model, as a ModelConfigResponse.

    With max_batch_size > 0 Triton's dims leave out the batch dimension, and a [batch]
    tensor is written [1] (Triton's convention, which we accept on the wire as [batch, 1]).
    State tensors keep their full shape: their batch is axis 1, which Triton's config
    cannot express; they are optional inputs.
    """
    provider = model.runtime.provider
    state_names = {*model.spec.state_inputs, *model.spec.state_outputs}
    inputs = [_config_tensor(meta, state_names) for meta in model.task.inputs]
    outputs = [_config_tensor(meta, state_names) for meta in model.task.outputs]
    config = pb.ModelConfig(
        name=model.name,
        platform=PLATFORM,
        backend="onnxruntime",
        max_batch_size=settings.max_batch_size,
        input=[
            pb.ModelInput(
                name=t.name, data_type=_type(t.datatype), dims=t.shape, optional=t.optional
            )
            for t in inputs
        ],
        output=[
            pb.ModelOutput(name=t.name, data_type=_type(t.datatype), dims=t.shape) for t in outputs
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
    if model.spec.streamable:
        config.sequence_batching.max_sequence_idle_microseconds = int(
            settings.session_idle_timeout_s * 1e6
        )
        config.sequence_batching.oldest.max_queue_delay_microseconds = queue_delay_us
    else:
        config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
    parameters = {
        "provider": provider, "task": model.spec.task, "cell": model.spec.cell,
        "state_batch_axis": "1",
    }  # fmt: skip
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return pb.ModelConfigResponse(config=config)


def _config_tensor(meta: TensorMetadata, state_names: set[str]) -> TensorMetadata:
    if meta.name in state_names:
        return meta
    dims = meta.shape[1:] or (1,)
    return TensorMetadata(meta.name, meta.datatype, dims, meta.optional)


def _type(datatype: str) -> int:
    # Triton's config calls BYTES "STRING".
    return pb.DataType.Value("TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}")
