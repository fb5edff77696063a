"""Protobuf <-> protocol-neutral types: the only module that touches protobuf messages.

Inputs arrive as typed `contents` or as `raw_input_contents` (little-endian; BYTES
elements each prefixed with a 4-byte little-endian length). Outputs always go back raw,
which is what Triton's clients expect and the cheapest to produce.
The client library uses the same functions in the other direction.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, MutableMapping

import numpy as np

from service.errors import InvalidArgument
from service.protocol.generated import grpc_service_pb2 as pb
from service.protocol.generated import model_config_pb2 as config_pb
from service.types import (
    InferRequest,
    InferResponse,
    InferStatistics,
    ModelConfigInfo,
    ModelMetadata,
    ModelStatistics,
    Parameter,
    RepositoryEntry,
    ServerMetadata,
    Tensor,
    TensorMetadata,
)

# Open Inference Protocol datatype -> numpy dtype (BYTES: object arrays of `bytes`).
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
DATATYPE_OF_DTYPE = {dtype: name for name, dtype in DTYPES.items() if name != "BYTES"}

# Which typed `contents` field carries each datatype; FP16 has none (raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

LENGTH_PREFIX = struct.Struct("<I")


# Parameters -------------------------------------------------------------------------


def parameters_from_proto(
    params: Mapping[str, pb.InferParameter], where: str
) -> dict[str, Parameter]:
    values: dict[str, Parameter] = {}
    for key, param in params.items():
        choice = param.WhichOneof("parameter_choice")
        if choice is None:
            raise InvalidArgument(f"{where} parameter '{key}' has no value")
        values[key] = getattr(param, choice)
    return values


def parameters_to_proto(values: Mapping[str, Parameter], out: MutableMapping) -> None:
    for key, value in values.items():
        param = out[key]
        # bool first: it is a subclass of int.
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            if value >= 2**63:
                param.uint64_param = value
            else:
                param.int64_param = value
        elif isinstance(value, float):
            param.double_param = value
        else:
            param.string_param = str(value)


# Tensors ----------------------------------------------------------------------------


def _checked_shape(name: str, shape: list[int]) -> tuple[int, ...]:
    if any(dim < 0 for dim in shape):
        raise InvalidArgument(
            f"input '{name}': shape {list(shape)} has a negative dimension; expected sizes >= 0"
        )
    return tuple(int(dim) for dim in shape)


def _checked_datatype(name: str, datatype: str) -> np.dtype:
    dtype = DTYPES.get(datatype)
    if dtype is None:
        raise InvalidArgument(
            f"input '{name}': unknown datatype '{datatype}'; expected one of {', '.join(DTYPES)}"
        )
    return dtype


def decode_bytes(name: str, raw: bytes, count: int) -> list[bytes]:
    """Split length-prefixed BYTES elements; the buffer must hold exactly `count`."""
    items: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + LENGTH_PREFIX.size > len(raw):
            raise InvalidArgument(f"input '{name}': BYTES data ends inside a length prefix")
        (length,) = LENGTH_PREFIX.unpack_from(raw, offset)
        offset += LENGTH_PREFIX.size
        if offset + length > len(raw):
            raise InvalidArgument(
                f"input '{name}': BYTES element {len(items)} claims {length} bytes, "
                f"only {len(raw) - offset} remain"
            )
        items.append(bytes(raw[offset : offset + length]))
        offset += length
    if len(items) != count:
        raise InvalidArgument(
            f"input '{name}': BYTES data holds {len(items)} elements, shape needs {count}"
        )
    return items


def encode_bytes(items: np.ndarray) -> bytes:
    parts: list[bytes] = []
    for item in items.reshape(-1):
        data = item.encode() if isinstance(item, str) else bytes(item)
        parts += [LENGTH_PREFIX.pack(len(data)), data]
    return b"".join(parts)


def _object_array(items: list[bytes], shape: tuple[int, ...]) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array.reshape(shape)


def tensor_from_raw(name: str, datatype: str, shape: list[int], raw: bytes) -> Tensor:
    dtype = _checked_datatype(name, datatype)
    dims = _checked_shape(name, shape)
    count = math.prod(dims)
    if datatype == "BYTES":
        return Tensor(name, datatype, dims, _object_array(decode_bytes(name, raw, count), dims))
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidArgument(
            f"input '{name}': raw_input_contents holds {len(raw)} bytes; "
            f"shape {list(dims)} of {datatype} needs {expected}"
        )
    data = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(dims)
    return Tensor(name, datatype, dims, data)


def tensor_from_contents(
    name: str, datatype: str, shape: list[int], contents: pb.InferTensorContents
) -> Tensor:
    dtype = _checked_datatype(name, datatype)
    dims = _checked_shape(name, shape)
    count = math.prod(dims)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidArgument(f"input '{name}': {datatype} data must come in raw_input_contents")
    others = [f.name for f, _ in contents.ListFields() if f.name != field]
    if others:
        raise InvalidArgument(
            f"input '{name}': datatype {datatype} carries its data in contents.{field}, "
            f"found contents.{others[0]}"
        )
    values = getattr(contents, field)
    if len(values) != count:
        raise InvalidArgument(
            f"input '{name}': contents.{field} holds {len(values)} elements, "
            f"shape {list(dims)} needs {count}"
        )
    if datatype == "BYTES":
        return Tensor(name, datatype, dims, _object_array(list(values), dims))
    try:
        data = np.array(values, dtype=dtype).reshape(dims)
    except OverflowError as error:
        raise InvalidArgument(f"input '{name}': a value does not fit {datatype}") from error
    return Tensor(name, datatype, dims, data)


def tensor_from_array(name: str, array: np.ndarray | list | str | bytes) -> Tensor:
    """A Tensor from numpy data; str/bytes (or arrays of them) become BYTES."""
    data = np.asarray(array)
    if data.dtype.kind in "USO":
        items = [x.encode() if isinstance(x, str) else bytes(x) for x in data.reshape(-1)]
        data = _object_array(items, data.shape)
        return Tensor(name, "BYTES", data.shape, data)
    datatype = DATATYPE_OF_DTYPE.get(data.dtype)
    if datatype is None:
        raise InvalidArgument(f"input '{name}': numpy dtype {data.dtype} has no protocol datatype")
    return Tensor(name, datatype, data.shape, data)


def raw_of(tensor: Tensor) -> bytes:
    if tensor.datatype == "BYTES":
        return encode_bytes(np.asarray(tensor.data, dtype=object))
    dtype = DTYPES[tensor.datatype].newbyteorder("<")
    return np.ascontiguousarray(tensor.data, dtype=dtype).tobytes()


# Requests and responses ---------------------------------------------------------------


def request_from_proto(message: pb.ModelInferRequest) -> InferRequest:
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InvalidArgument(
            f"raw_input_contents has {len(raw)} entries; expected one per input "
            f"({len(message.inputs)})"
        )
    inputs: list[Tensor] = []
    for index, item in enumerate(message.inputs):
        if any(t.name == item.name for t in inputs):
            raise InvalidArgument(f"input '{item.name}' appears more than once")
        if raw:
            if item.HasField("contents"):
                raise InvalidArgument(
                    f"input '{item.name}': give its data in contents or in "
                    "raw_input_contents, not both"
                )
            tensor = tensor_from_raw(item.name, item.datatype, list(item.shape), raw[index])
        else:
            tensor = tensor_from_contents(item.name, item.datatype, list(item.shape), item.contents)
        tensor.parameters = parameters_from_proto(item.parameters, f"input '{item.name}'")
        inputs.append(tensor)
    return InferRequest(
        model_name=message.model_name,
        model_version=message.model_version,
        id=message.id,
        inputs=inputs,
        outputs=[output.name for output in message.outputs],
        parameters=parameters_from_proto(message.parameters, "request"),
    )


def request_to_proto(request: InferRequest) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(
        model_name=request.model_name, model_version=request.model_version, id=request.id
    )
    parameters_to_proto(request.parameters, message.parameters)
    for tensor in request.inputs:
        item = message.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        parameters_to_proto(tensor.parameters, item.parameters)
        message.raw_input_contents.append(raw_of(tensor))
    for name in request.outputs:
        message.outputs.add(name=name)
    return message


def response_to_proto(response: InferResponse) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    parameters_to_proto(response.parameters, message.parameters)
    for tensor in response.outputs:
        item = message.outputs.add(
            name=tensor.name, datatype=tensor.datatype, shape=tensor.data.shape
        )
        parameters_to_proto(tensor.parameters, item.parameters)
        message.raw_output_contents.append(raw_of(tensor))
    return message


def response_from_proto(message: pb.ModelInferResponse) -> InferResponse:
    """Decode a response (raw or typed outputs, as any server may send)."""
    raw = message.raw_output_contents
    outputs = [
        tensor_from_raw(item.name, item.datatype, list(item.shape), raw[index])
        if raw
        else tensor_from_contents(item.name, item.datatype, list(item.shape), item.contents)
        for index, item in enumerate(message.outputs)
    ]
    return InferResponse(
        model_name=message.model_name,
        model_version=message.model_version,
        id=message.id,
        outputs=outputs,
        parameters=parameters_from_proto(message.parameters, "response"),
    )


# Metadata ---------------------------------------------------------------------------


def server_metadata_to_proto(metadata: ServerMetadata) -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(
        name=metadata.name, version=metadata.version, extensions=metadata.extensions
    )


def _tensor_metadata(tensor: TensorMetadata) -> pb.ModelMetadataResponse.TensorMetadata:
    item = pb.ModelMetadataResponse.TensorMetadata(
        name=tensor.name, datatype=tensor.datatype, shape=tensor.shape
    )
    if tensor.optional:
        item.parameters["optional"].bool_param = True
    return item


def model_metadata_to_proto(metadata: ModelMetadata) -> pb.ModelMetadataResponse:
    message = pb.ModelMetadataResponse(
        name=metadata.name,
        versions=metadata.versions,
        platform=metadata.platform,
        inputs=[_tensor_metadata(t) for t in metadata.inputs],
        outputs=[_tensor_metadata(t) for t in metadata.outputs],
    )
    parameters_to_proto(metadata.parameters, message.parameters)
    return message


def _config_type(datatype: str) -> int:
    # Triton's config calls BYTES "STRING".
    return config_pb.DataType.Value("TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}")


def model_config_to_proto(info: ModelConfigInfo) -> pb.ModelConfigResponse:
    config = config_pb.ModelConfig(
        name=info.name,
        platform=info.platform,
        backend="onnxruntime",
        max_batch_size=info.max_batch_size,
        input=[
            config_pb.ModelInput(
                name=t.name, data_type=_config_type(t.datatype), dims=t.shape, optional=t.optional
            )
            for t in info.inputs
        ],
        output=[
            config_pb.ModelOutput(name=t.name, data_type=_config_type(t.datatype), dims=t.shape)
            for t in info.outputs
        ],
        instance_group=[
            config_pb.ModelInstanceGroup(
                kind=config_pb.ModelInstanceGroup.Kind.Value(info.instance_kind), count=1
            )
        ],
    )
    if info.sequence_batching:
        config.sequence_batching.max_sequence_idle_microseconds = (
            info.max_sequence_idle_microseconds
        )
        config.sequence_batching.oldest.preferred_batch_size.extend(info.preferred_batch_sizes)
        config.sequence_batching.oldest.max_queue_delay_microseconds = (
            info.dynamic_batching_max_queue_delay_microseconds
        )
    else:
        config.dynamic_batching.preferred_batch_size.extend(info.preferred_batch_sizes)
        config.dynamic_batching.max_queue_delay_microseconds = (
            info.dynamic_batching_max_queue_delay_microseconds
        )
    for key, value in info.parameters.items():
        config.parameters[key].string_value = value
    return pb.ModelConfigResponse(config=config)


def _duration(stats: InferStatistics) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=stats.count, ns=stats.ns)


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


def repository_index_to_proto(
    entries: list[RepositoryEntry], ready_only: bool
) -> pb.RepositoryIndexResponse:
    return pb.RepositoryIndexResponse(
        models=[
            pb.RepositoryIndexResponse.ModelIndex(
                name=e.name, version=e.version, state=e.state, reason=e.reason
            )
            for e in entries
            if e.state == "READY" or not ready_only
        ]
    )
