"""Protocol-neutral request and response types: the data plane speaks only these.

Tensors hold numpy arrays; BYTES tensors hold a 1-D-or-more object array of `bytes`.
Datatype names are the Open Inference Protocol's ("FP32", "INT64", "BYTES", "BOOL", ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rnnserve.model.spec import State
from rnnserve.protocol.codec import CONTENT_TYPE, TEXT, Parameter

__all__ = ["Parameter", "State"]  # request parameter values, as the wire carries them

# The principal of every request when authentication is off: all clients are one.
ANONYMOUS = "anonymous"


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: dict[str, Parameter] = field(default_factory=dict)


@dataclass
class InferRequest:
    model_name: str
    model_version: str = ""  # "" selects the newest loaded version
    id: str = ""
    inputs: list[Tensor] = field(default_factory=list)
    # Names the client asked for; empty means the model's default outputs.
    outputs: list[str] = field(default_factory=list)
    parameters: dict[str, Parameter] = field(default_factory=dict)
    # Who sent it, as the front end authenticated it: sessions are kept per principal.
    principal: str = ANONYMOUS


def request_bytes(request: InferRequest) -> int:
    """The bytes of data a request's inputs carry (text bytes for BYTES tensors)."""
    total = 0
    for tensor in request.inputs:
        if tensor.data.dtype == object:
            total += sum(len(item) for item in tensor.data.flat)
        else:
            total += tensor.data.nbytes
    return total


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    id: str = ""
    outputs: list[Tensor] = field(default_factory=list)
    parameters: dict[str, Parameter] = field(default_factory=dict)
    final: bool = True  # the last response of its request (streaming answers in several)


@dataclass
class TensorMetadata:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 for a dynamic dimension
    optional: bool = False
    text: bool = False  # BYTES elements that are UTF-8 text

    @property
    def parameters(self) -> dict[str, Parameter]:
        """What metadata says of the tensor beyond name, datatype and shape."""
        parameters: dict[str, Parameter] = {}
        if self.optional:
            parameters["optional"] = True
        if self.text:
            parameters[CONTENT_TYPE] = TEXT
        return parameters


@dataclass
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Parameter] = field(default_factory=dict)


@dataclass
class ServerMetadata:
    name: str
    version: str
    extensions: list[str]


@dataclass
class RepositoryEntry:
    name: str
    version: str
    state: str  # "READY", "LOADING", "UNAVAILABLE"
    reason: str = ""


@dataclass
class InferStatistics:
    """Cumulative counts and nanoseconds, as Triton's ModelStatistics reports them."""

    count: int = 0
    ns: int = 0


@dataclass
class ModelStatistics:
    name: str
    version: str
    last_inference_ms: int = 0
    inference_count: int = 0  # rows (batch items) inferred
    execution_count: int = 0  # ORT runs
    success: InferStatistics = field(default_factory=InferStatistics)
    fail: InferStatistics = field(default_factory=InferStatistics)
    queue: InferStatistics = field(default_factory=InferStatistics)
    compute_input: InferStatistics = field(default_factory=InferStatistics)
    compute_infer: InferStatistics = field(default_factory=InferStatistics)
    compute_output: InferStatistics = field(default_factory=InferStatistics)
    # batch size -> (count, compute ns) for ORT runs of that many rows
    batch_stats: dict[int, InferStatistics] = field(default_factory=dict)
