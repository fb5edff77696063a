"""REST bodies (KServe v2 JSON, Triton's binary tensor data extension) <-> the server's
protocol-neutral types: the REST twin of service/grpc/converter.py. Tensor data goes through
rnnserve.protocol.rest and codec, which the client uses too.

Views Triton defines by a protobuf message (ModelConfig, statistics) are built by
service/triton.py, for every front end, and written as JSON by protobuf's json_format, with
64-bit integers as JSON numbers (json_format writes them as strings), as Triton's REST API
writes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from rnnserve.protocol import rest
from rnnserve.service.errors import InvalidArgument, decoding
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

# Requested-output parameters of Triton's classification extension, which we lack.
_UNSUPPORTED_OUTPUT_PARAMETERS = ("classification",)


@dataclass
class OutputFormat:
    """How a request wants its outputs: binary (the binary data extension) or JSON."""

    binary_default: bool = False  # request parameter binary_data_output
    binary: dict[str, bool] = field(default_factory=dict)  # per requested output

    def is_binary(self, name: str) -> bool:
        return self.binary.get(name, self.binary_default)


# Requests and responses ---------------------------------------------------------------


def request_from_json(
    body: bytes | bytearray,
    header_length: str | None,
    model: str,
    version: str,
    principal: str = ANONYMOUS,
) -> tuple[InferRequest, OutputFormat]:
    """An infer request of `principal` for `model` (and `version`, "" for the newest) from
    its body, and how it wants its outputs."""
    with decoding():
        header, binary_part = rest.split_body(body, header_length)
        binary = rest.BinaryData(binary_part)
        request_id = header.get("id", "")
        if not isinstance(request_id, str):
            raise InvalidArgument("'id' must be a string")
        items = header.get("inputs")
        if not isinstance(items, list):
            raise InvalidArgument("'inputs' must be a JSON array of input tensors")
        inputs: list[Tensor] = []
        names: set[str] = set()
        for item in items:
            name, datatype, data, parameters = rest.tensor_from_json(item, binary)
            if name in names:
                raise InvalidArgument(f"input '{name}' appears more than once")
            names.add(name)
            inputs.append(Tensor(name, datatype, data.shape, data, parameters))
        binary.check_consumed()
        parameters = dict(rest.parameters_from_json(header.get("parameters"), "request"))
        output_format = OutputFormat(_flag(parameters.pop(rest.BINARY_DATA_OUTPUT, False)))
        outputs = _requested_outputs(header.get("outputs"), output_format)
    request = InferRequest(model, version, request_id, inputs, outputs, parameters, principal)
    return request, output_format


def _requested_outputs(items: object, output_format: OutputFormat) -> list[str]:
    if items is None:
        return []
    if not isinstance(items, list):
        raise InvalidArgument("'outputs' must be a JSON array of requested outputs")
    names: list[str] = []
    for item in items:
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            raise InvalidArgument("each requested output must be an object with a 'name'")
        parameters = rest.parameters_from_json(item.get("parameters"), f"output '{name}'")
        for unsupported in _UNSUPPORTED_OUTPUT_PARAMETERS:
            if unsupported in parameters:
                raise InvalidArgument(
                    f"output '{name}': parameter '{unsupported}' is not supported "
                    "(no classification extension); ask for the output itself"
                )
        if rest.BINARY_DATA in parameters:
            output_format.binary[name] = _flag(parameters[rest.BINARY_DATA])
        names.append(name)
    return names


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(
            f"parameters {rest.BINARY_DATA_OUTPUT} and {rest.BINARY_DATA} must be true or "
            f"false, got {value!r}"
        )
    return value


def response_to_json(
    response: InferResponse, output_format: OutputFormat
) -> tuple[bytes, int | None]:
    """The response body, and its JSON's length when binary data follows it."""
    binary: list[bytes] = []
    outputs = []
    with decoding():
        for tensor in response.outputs:
            into = binary if output_format.is_binary(tensor.name) else None
            item = rest.tensor_to_json(tensor.name, tensor.datatype, tensor.data, into)
            if tensor.parameters:
                item["parameters"] = {**tensor.parameters, **item.get("parameters", {})}
            outputs.append(item)
    header: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
    }
    if response.id:
        header["id"] = response.id
    if response.parameters:
        header["parameters"] = response.parameters
    header["outputs"] = outputs
    return rest.join_body(header, binary)


# Metadata ---------------------------------------------------------------------------


def server_metadata_to_json(metadata: ServerMetadata) -> dict[str, Any]:
    return {"name": metadata.name, "version": metadata.version, "extensions": metadata.extensions}


def _tensor_metadata(tensor: TensorMetadata) -> dict[str, Any]:
    item: dict[str, Any] = {
        "name": tensor.name,
        "datatype": tensor.datatype,
        "shape": list(tensor.shape),
    }
    if tensor.parameters:
        item["parameters"] = tensor.parameters
    return item


def model_metadata_to_json(metadata: ModelMetadata) -> dict[str, Any]:
    return {
        "name": metadata.name,
        "versions": metadata.versions,
        "platform": metadata.platform,
        "inputs": [_tensor_metadata(t) for t in metadata.inputs],
        "outputs": [_tensor_metadata(t) for t in metadata.outputs],
        "parameters": metadata.parameters,
    }


def repository_index_to_json(
    entries: list[RepositoryEntry], ready_only: bool
) -> list[dict[str, str]]:
    return [
        {"name": e.name, "version": e.version, "state": e.state, "reason": e.reason}
        for e in entries
        if e.state == "READY" or not ready_only
    ]


def message_to_json(message: Message) -> dict[str, Any]:
    """A protobuf message as Triton's REST API writes it: proto field names, every field
    (zeros and empty lists too), 64-bit integers as numbers."""
    value = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    # Typed as either protobuf implementation's; upb's is the one `Descriptor` names here.
    _int64_as_numbers(value, cast(Descriptor, message.DESCRIPTOR))
    return value


_INT64_TYPES = {
    FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64,
}  # fmt: skip


def _int64_as_numbers(value: dict[str, Any], descriptor: Descriptor) -> None:
    for item in descriptor.fields:
        if item.name not in value:
            continue
        found = value[item.name]
        kind = item.message_type
        if kind is not None and kind.GetOptions().map_entry:
            entry = kind.fields_by_name["value"]
            if entry.message_type is not None:
                for nested in found.values():
                    _int64_as_numbers(nested, entry.message_type)
            elif entry.type in _INT64_TYPES:
                value[item.name] = {key: int(number) for key, number in found.items()}
        elif kind is not None:
            for nested in found if isinstance(found, list) else [found]:
                _int64_as_numbers(nested, kind)
        elif item.type in _INT64_TYPES:
            value[item.name] = [int(n) for n in found] if isinstance(found, list) else int(found)
