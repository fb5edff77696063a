"""Server and model metadata as dataclasses, from either protocol's answer.

ModelMetadata lists a model's plain tensors, as Triton lists a model with implicit state;
its parameters name the rest, which the properties here read: the state pairs a sequence
carries (`state_inputs` -> `state_outputs`), the control tensors of multi-session requests
(`control_inputs`, `control_outputs`), and which BYTES tensors are text (the tensor's
`content_type` parameter, "str").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rnnserve.protocol import codec
from rnnserve.protocol.codec import CONTENT_TYPE, TEXT, Parameter


@dataclass
class ServerMetadata:
    name: str
    version: str
    extensions: list[str] = field(default_factory=list)

    @classmethod
    def from_proto(cls, message: Any) -> ServerMetadata:
        return cls(message.name, message.version, list(message.extensions))

    @classmethod
    def from_json(cls, answer: dict[str, Any]) -> ServerMetadata:
        """From the REST API's JSON (`GET /v2`)."""
        return cls(answer["name"], answer["version"], answer.get("extensions", []))


@dataclass
class TensorMetadata:
    name: str
    datatype: str
    shape: list[int]  # -1 for a dynamic dimension
    parameters: dict[str, Parameter] = field(default_factory=dict)

    @property
    def optional(self) -> bool:
        """The model runs without it."""
        return bool(self.parameters.get("optional", False))

    @property
    def text(self) -> bool:
        """BYTES elements that are UTF-8 text (the client hands them out as `str`)."""
        return self.datatype == "BYTES" and self.parameters.get(CONTENT_TYPE) == TEXT

    @classmethod
    def from_proto(cls, message: Any) -> TensorMetadata:
        where = f"tensor '{message.name}'"
        parameters = codec.parameters_from_proto(message.parameters, where)
        return cls(message.name, message.datatype, list(message.shape), parameters)

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> TensorMetadata:
        return cls(item["name"], item["datatype"], item["shape"], item.get("parameters", {}))


@dataclass
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Parameter] = field(default_factory=dict)

    @property
    def state_inputs(self) -> list[str]:
        """The inputs a sequence's state comes in by (none for stateless models)."""
        return self._names("state_inputs")

    @property
    def state_outputs(self) -> list[str]:
        return self._names("state_outputs")

    @property
    def state_pairs(self) -> dict[str, str]:
        """Each state input and the output that carries it on: {"h0": "hn", "c0": "cn"}."""
        return dict(zip(self.state_inputs, self.state_outputs, strict=True))

    @property
    def control_inputs(self) -> list[str]:
        """The control tensors of a multi-session request (none for models without)."""
        return self._names("control_inputs")

    @property
    def control_outputs(self) -> list[str]:
        return self._names("control_outputs")

    @property
    def text_outputs(self) -> frozenset[str]:
        """The outputs whose BYTES elements are text."""
        return frozenset(tensor.name for tensor in self.outputs if tensor.text)

    def _names(self, parameter: str) -> list[str]:
        """A parameter listing tensor names, comma-separated."""
        return [name for name in str(self.parameters.get(parameter, "")).split(",") if name]

    @classmethod
    def from_proto(cls, message: Any) -> ModelMetadata:
        return cls(
            name=message.name,
            versions=list(message.versions),
            platform=message.platform,
            inputs=[TensorMetadata.from_proto(item) for item in message.inputs],
            outputs=[TensorMetadata.from_proto(item) for item in message.outputs],
            parameters=codec.parameters_from_proto(message.parameters, "model metadata"),
        )

    @classmethod
    def from_json(cls, answer: dict[str, Any]) -> ModelMetadata:
        """From the REST API's JSON (`GET /v2/models/{name}`)."""
        return cls(
            name=answer["name"],
            versions=answer.get("versions", []),
            platform=answer.get("platform", ""),
            inputs=[TensorMetadata.from_json(item) for item in answer.get("inputs", [])],
            outputs=[TensorMetadata.from_json(item) for item in answer.get("outputs", [])],
            parameters=answer.get("parameters", {}),
        )
