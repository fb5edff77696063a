"""Protobuf messages <-> the server's protocol-neutral types: the only server module that
touches protobuf messages. Tensor data goes through rnnserve.protocol.codec, the codec the
client uses too, so both ends agree on the wire format by construction.

Inputs arrive as typed `contents` or as `raw_input_contents`; outputs go back the way the
inputs came: raw (what Triton's clients send, and the cheapest to produce) or typed, so
that a grpcurl user who sent JSON `contents` reads JSON numbers and strings back.
"""

from __future__ import annotations

from typing import Any

from rnnserve.protocol import codec
from rnnserve.protocol import messages as pb
from rnnserve.protocol.sequences import ERROR_CODE
from rnnserve.service.errors import InvalidArgument, ServiceError, decoding
from rnnserve.service.types import (
    ANONYMOUS,
    InferRequest,
    InferResponse,
    ModelMetadata,
    RepositoryEntry,
    ServerMetadata,
    Tensor,
    TensorMetadata,
)

FINAL_RESPONSE = "triton_final_response"

# Requests and responses ---------------------------------------------------------------


# Every read of a message's field is a lookup by name in protobuf (upb) that builds a new
# Python object, about a microsecond on a request's path: each field is read once, and the
# codec is called for parameters only when there are some (most tensors carry none).


def request_from_proto(message: pb.ModelInferRequest, principal: str = ANONYMOUS) -> InferRequest:
    raw = message.raw_input_contents
    items = message.inputs
    if raw and len(raw) != len(items):
        raise InvalidArgument(
            f"raw_input_contents has {len(raw)} entries; expected one per input ({len(items)})"
        )
    inputs: list[Tensor] = []
    names: set[str] = set()
    with decoding():
        for index, item in enumerate(items):
            name, datatype = item.name, item.datatype
            if name in names:
                raise InvalidArgument(f"input '{name}' appears more than once")
            names.add(name)
            if raw:
                if item.HasField("contents"):
                    raise InvalidArgument(
                        f"input '{name}': give its data in contents or in "
                        "raw_input_contents, not both"
                    )
                data = codec.array_from_raw(name, datatype, item.shape, raw[index])
            else:
                data = codec.array_from_contents(name, datatype, item.shape, item.contents)
            given = item.parameters
            parameters = codec.parameters_from_proto(given, f"input '{name}'") if given else {}
            inputs.append(Tensor(name, datatype, data.shape, data, parameters))
        parameters = codec.parameters_from_proto(message.parameters, "request")
    return InferRequest(
        model_name=message.model_name,
        model_version=message.model_version,
        id=message.id,
        inputs=inputs,
        outputs=[output.name for output in message.outputs],
        parameters=parameters,
        principal=principal,
    )


def sends_contents(message: pb.ModelInferRequest) -> bool:
    """Whether a request carries its inputs in typed `contents` (not raw)."""
    return bool(message.inputs) and not message.raw_input_contents


def response_to_proto(
    response: InferResponse, typed: bool = False, message: pb.ModelInferResponse | None = None
) -> pb.ModelInferResponse:
    """The response message (written into `message` when given: a stream's reply holds
    one, which is cheaper to fill than to copy); outputs in typed `contents` when `typed`
    and every output's datatype has a contents field (FP16 has none: then all go raw), raw
    otherwise."""
    if message is None:
        message = pb.ModelInferResponse()
    message.model_name = response.model_name
    message.model_version = response.model_version
    message.id = response.id
    if response.parameters:
        codec.parameters_to_proto(response.parameters, message.parameters)
    typed = typed and all(t.datatype in codec.CONTENTS_FIELD for t in response.outputs)
    outputs, raw = message.outputs, message.raw_output_contents
    for tensor in response.outputs:
        item = outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.data.shape)
        if tensor.parameters:
            codec.parameters_to_proto(tensor.parameters, item.parameters)
        if typed:
            codec.fill_contents(tensor.datatype, tensor.data, item.contents)
        else:
            raw.append(codec.raw_of(tensor.datatype, tensor.data))
    return message


def stream_response_to_proto(
    response: InferResponse, typed: bool = False
) -> pb.ModelStreamInferResponse:
    """A response on a stream, with Triton's flag that says whether it is its request's
    last (its streaming extension)."""
    reply = pb.ModelStreamInferResponse()
    message = response_to_proto(response, typed, reply.infer_response)
    message.parameters[FINAL_RESPONSE].bool_param = response.final
    return reply


def stream_error_to_proto(
    request: pb.ModelInferRequest, error: ServiceError
) -> pb.ModelStreamInferResponse:
    """A failed request's answer on a stream, which stays open: Triton's `error_message`,
    and a response naming the request whose parameters carry what a status and trailing
    metadata would carry on a unary call (`error_code`, the status code name, and the
    error's details) for clients that read them."""
    reply = pb.ModelStreamInferResponse(error_message=error.message)
    answer = reply.infer_response
    answer.model_name, answer.model_version = request.model_name, request.model_version
    answer.id = request.id
    codec.parameters_to_proto({ERROR_CODE: error.code, **error.details}, answer.parameters)
    return reply


# Metadata ---------------------------------------------------------------------------


def server_metadata_to_proto(metadata: ServerMetadata) -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(
        name=metadata.name, version=metadata.version, extensions=metadata.extensions
    )


def _tensor_metadata(tensor: TensorMetadata) -> Any:
    item = pb.ModelMetadataResponse.TensorMetadata(
        name=tensor.name, datatype=tensor.datatype, shape=tensor.shape
    )
    codec.parameters_to_proto(tensor.parameters, item.parameters)
    return item


def model_metadata_to_proto(metadata: ModelMetadata) -> pb.ModelMetadataResponse:
    message = pb.ModelMetadataResponse(
        name=metadata.name,
        versions=metadata.versions,
        platform=metadata.platform,
        inputs=[_tensor_metadata(t) for t in metadata.inputs],
        outputs=[_tensor_metadata(t) for t in metadata.outputs],
    )
    codec.parameters_to_proto(metadata.parameters, message.parameters)
    return message


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
