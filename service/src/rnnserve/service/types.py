"""Protocol-neutral request and response types: the data plane speaks only these.

Tensors hold numpy arrays; BYTES tensors hold a 1-D-or-more object array of `bytes`.
Datatype names are the Open Inference Protocol's ("FP32", "INT64", "BYTES", "BOOL", ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from rnnserve.model.sidecar import VersionPolicy
from rnnserve.model.spec import State
from rnnserve.protocol.codec import CONTENT_TYPE, TEXT, Parameter

__all__ = ["Parameter", "State"]  # request parameter values, as the wire carries them

# The principal of every request when authentication is off: all clients are one.
ANONYMOUS = "anonymous"


@dataclass(init=False)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: dict[str, Parameter]

    # __init__ by hand: compiled, a dataclass's generated one runs as Python, at three times
    # the cost; made for every request.
    def __init__(
        self,
        name: str,
        datatype: str,
        shape: tuple[int, ...],
        data: np.ndarray,
        parameters: dict[str, Parameter] | None = None,
    ) -> None:
        self.name = name
        self.datatype = datatype
        self.shape = shape
        self.data = data
        self.parameters = {} if parameters is None else parameters


@dataclass(init=False)
class InferRequest:
    model_name: str
    model_version: str  # "" selects the newest loaded version
    id: str
    inputs: list[Tensor]
    # Names the client asked for; empty means the model's default outputs.
    outputs: list[str]
    parameters: dict[str, Parameter]
    # Who sent it, as the front end authenticated it: sessions are kept per principal.
    principal: str

    # __init__ by hand: compiled, a dataclass's generated one runs as Python, at three times
    # the cost; made for every request.
    def __init__(
        self,
        model_name: str,
        model_version: str = "",
        id: str = "",
        inputs: list[Tensor] | None = None,
        outputs: list[str] | None = None,
        parameters: dict[str, Parameter] | None = None,
        principal: str = ANONYMOUS,
    ) -> None:
        self.model_name = model_name
        self.model_version = model_version
        self.id = id
        self.inputs = [] if inputs is None else inputs
        self.outputs = [] if outputs is None else outputs
        self.parameters = {} if parameters is None else parameters
        self.principal = principal


def request_bytes(request: InferRequest) -> int:
    """The bytes of data a request's inputs carry (text bytes for BYTES tensors)."""
    total = 0
    for tensor in request.inputs:
        if tensor.data.dtype == object:
            total += sum(len(item) for item in tensor.data.flat)
        else:
            total += tensor.data.nbytes
    return total


@dataclass(init=False)
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[Tensor]
    parameters: dict[str, Parameter]
    final: bool  # the last response of its request (streaming answers in several)

    # __init__ by hand: compiled, a dataclass's generated one runs as Python, at three times
    # the cost; made for every request.
    def __init__(
        self,
        model_name: str,
        model_version: str,
        id: str = "",
        outputs: list[Tensor] | None = None,
        parameters: dict[str, Parameter] | None = None,
        final: bool = True,
    ) -> None:
        self.model_name = model_name
        self.model_version = model_version
        self.id = id
        self.outputs = [] if outputs is None else outputs
        self.parameters = {} if parameters is None else parameters
        self.final = final


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


# A model's configuration as Triton's model_configuration extension describes it (its
# ModelConfig message, read by Triton's tools), with the Open Inference Protocol's datatype
# names (Triton's configuration calls BYTES "STRING").


@dataclass(frozen=True)
class ConfigTensor:
    name: str
    datatype: str
    dims: tuple[int, ...]  # without the batch dimension when the model batches
    optional: bool = False


@dataclass(frozen=True)
class ConfigState:
    """A pair of state tensors, as Triton's implicit state management describes it."""

    input: str
    output: str
    datatype: str
    dims: tuple[int, ...]  # without the batch axis when the model batches
    starts_at_zeros: bool  # an initial state of zeros is described (models that batch)


@dataclass(frozen=True)
class SequenceControl:
    """A control input of Triton's sequence batching (a multi-session request's tensors)."""

    name: str
    kind: Literal["SEQUENCE_START", "SEQUENCE_END", "SEQUENCE_CORRID"]
    datatype: str


@dataclass(frozen=True)
class SequenceBatching:
    max_idle_us: int  # how long an idle sequence's state is kept
    states: list[ConfigState]
    controls: list[SequenceControl]


@dataclass(frozen=True)
class DynamicBatching:
    """How a version batches concurrent stateless requests (Triton's dynamic_batching)."""

    preferred_batch_sizes: tuple[int, ...]  # rows run as soon as gathered
    max_queue_delay_us: int  # the longest a request waits for others
    max_batch_size: int  # the most rows one batch gathers


@dataclass(frozen=True)
class ModelConfig:
    name: str
    platform: str
    backend: str
    max_batch_size: int  # 0: the model has no batch dimension (dims are whole shapes)
    inputs: list[ConfigTensor]
    outputs: list[ConfigTensor]
    version_policy: VersionPolicy
    instance_kind: Literal["CPU", "GPU"]
    max_queue_delay_us: int  # of its batcher: dynamic, or the oldest sequence's
    sequence_batching: SequenceBatching | None  # None: the model has no sequences
    dynamic_batching: DynamicBatching | None  # None: each stateless request runs alone
    parameters: dict[str, str]
    instance_count: int = 1  # ORT sessions per graph (instances_per_device)


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
