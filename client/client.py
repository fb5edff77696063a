"""RnnClient: numpy in, numpy out over the Open Inference Protocol's gRPC API.

Tensor encoding is rnnserve.protocol.codec's, shared with the server, so both ends agree
on the wire format by construction. The client imports nothing of the server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import numpy as np

from rnnserve.client.errors import InferenceError
from rnnserve.protocol import codec, rpc
from rnnserve.protocol import messages as pb
from rnnserve.protocol.codec import Parameter

T = TypeVar("T")


@dataclass
class InferResult:
    """One response: outputs by name (BYTES outputs hold `bytes`) and its parameters."""

    model_name: str
    model_version: str
    id: str = ""
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    parameters: dict[str, Parameter] = field(default_factory=dict)


def call(rpc_call: Callable[[], T]) -> T:
    """Run one gRPC call, turning its failure into an InferenceError."""
    try:
        return rpc_call()
    except grpc.RpcError as error:
        raise InferenceError(error.code().name, error.details() or "") from None


def sine_input(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """A sine model's `x` from one sequence ([seq]), a batch ([batch, seq]) or [b, s, 1]."""
    x = np.asarray(values, dtype=np.float32)
    if x.ndim == 1:
        x = x[np.newaxis, :]
    if x.ndim == 2:
        x = x[..., np.newaxis]
    return x


def build_request(
    model: str,
    inputs: Mapping[str, np.ndarray | str | list],
    outputs: Sequence[str] = (),
    parameters: Mapping[str, Parameter] | None = None,
    version: str = "",
) -> Any:
    """A ModelInferRequest carrying `inputs` as raw tensor data."""
    message = pb.ModelInferRequest(model_name=model, model_version=version)
    codec.parameters_to_proto(parameters or {}, message.parameters)
    for name, data in inputs.items():
        datatype, array = codec.wire_array(name, data)
        message.inputs.add(name=name, datatype=datatype, shape=array.shape)
        message.raw_input_contents.append(codec.raw_of(datatype, array))
    for name in outputs:
        message.outputs.add(name=name)
    return message


def decode_response(message: Any) -> InferResult:
    """A ModelInferResponse's outputs, raw or typed, as any server may send them."""
    raw = message.raw_output_contents
    outputs = {
        item.name: (
            codec.array_from_raw(item.name, item.datatype, list(item.shape), raw[index])
            if raw
            else codec.array_from_contents(
                item.name, item.datatype, list(item.shape), item.contents
            )
        )
        for index, item in enumerate(message.outputs)
    }
    return InferResult(
        model_name=message.model_name,
        model_version=message.model_version,
        id=message.id,
        outputs=outputs,
        parameters=codec.parameters_from_proto(message.parameters, "response"),
    )


def session_controls(
    ids: Sequence[int] | Sequence[str], start: bool | Sequence[bool], end: bool | Sequence[bool]
) -> dict[str, np.ndarray]:
    """The control inputs of a multi-session request: row i is a step of session ids[i].
    Integer ids go as UINT64, string ids as BYTES; a single flag applies to every row."""
    rows = len(ids)
    all_ints = all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
    return {
        "sequence_id": np.asarray(ids, np.uint64) if all_ints else np.asarray(ids, object),
        "sequence_start": np.broadcast_to(np.asarray(start, np.bool_), (rows,)).copy(),
        "sequence_end": np.broadcast_to(np.asarray(end, np.bool_), (rows,)).copy(),
    }


class RnnClient:
    def __init__(self, address: str = "localhost:8001", timeout_s: float | None = 30.0) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_receive_message_length", -1),
                ("grpc.max_send_message_length", -1),
            ],
        )
        self.stub = rpc.Stub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RnnClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Health and metadata (the protocol's own messages) -------------------------------

    def server_live(self) -> bool:
        return call(
            lambda: self.stub.ServerLive(pb.ServerLiveRequest(), timeout=self.timeout_s)
        ).live

    def server_ready(self) -> bool:
        return call(
            lambda: self.stub.ServerReady(pb.ServerReadyRequest(), timeout=self.timeout_s)
        ).ready

    def model_ready(self, model: str, version: str = "") -> bool:
        request = pb.ModelReadyRequest(name=model, version=version)
        return call(lambda: self.stub.ModelReady(request, timeout=self.timeout_s)).ready

    def server_metadata(self) -> Any:
        request = pb.ServerMetadataRequest()
        return call(lambda: self.stub.ServerMetadata(request, timeout=self.timeout_s))

    def model_metadata(self, model: str, version: str = "") -> Any:
        request = pb.ModelMetadataRequest(name=model, version=version)
        return call(lambda: self.stub.ModelMetadata(request, timeout=self.timeout_s))

    # Inference -------------------------------------------------------------------------

    def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray | str | list],
        outputs: Sequence[str] = (),
        parameters: Mapping[str, Parameter] | None = None,
        version: str = "",
    ) -> dict[str, np.ndarray]:
        """Run one request; returns output name -> array (BYTES outputs hold `bytes`)."""
        return self.infer_response(model, inputs, outputs, parameters, version).outputs

    def infer_response(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray | str | list],
        outputs: Sequence[str] = (),
        parameters: Mapping[str, Parameter] | None = None,
        version: str = "",
    ) -> InferResult:
        return self.infer_response_of(build_request(model, inputs, outputs, parameters, version))

    def infer_response_of(self, request: Any) -> InferResult:
        """ModelInfer with a request message built already (see `build_request`)."""
        reply = call(lambda: self.stub.ModelInfer(request, timeout=self.timeout_s))
        return decode_response(reply)

    def step_sessions(
        self,
        model: str,
        ids: Sequence[int] | Sequence[str],
        inputs: Mapping[str, np.ndarray | str | list],
        start: bool | Sequence[bool] = False,
        end: bool | Sequence[bool] = False,
        outputs: Sequence[str] = (),
        version: str = "",
    ) -> tuple[dict[str, np.ndarray], list[str]]:
        """One step of many sessions in one request: row i of every input is a step of
        session ids[i], starting it where start[i], ending it where end[i]. Returns the
        outputs and each row's error ("" for a row that stepped; a failed row's outputs are
        zeros or empty strings and its session is unchanged)."""
        controls = session_controls(ids, start, end)
        response = self.infer_response(model, {**inputs, **controls}, outputs, version=version)
        out = response.outputs
        errors = [message.decode() for message in out.pop("sequence_error").reshape(-1)]
        return out, errors

    def stream(self, requests: Iterator[Any]) -> Iterator[InferResult]:
        """ModelStreamInfer: responses as they come; an error in the stream raises."""
        return self.stream_replies(self.stub.ModelStreamInfer(requests))

    @staticmethod
    def stream_replies(replies: Iterator[Any]) -> Iterator[InferResult]:
        """ModelStreamInferResponses as results; an error reported in the stream raises."""
        try:
            for reply in replies:
                if reply.error_message:
                    # The stream stays open: the caller may go on sending.
                    raise InferenceError("STREAM_ERROR", reply.error_message)
                yield decode_response(reply.infer_response)
        except grpc.RpcError as error:
            raise InferenceError(error.code().name, error.details() or "") from None

    # The default models ------------------------------------------------------------

    def infer_sine(
        self,
        values: Sequence[float] | np.ndarray,
        states: Mapping[str, np.ndarray] | None = None,
        model: str = "sine-lstm",
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """y for x = `values`, and the final states keyed by the state inputs they feed
        (`h0`, `c0`), to pass to the next call."""
        pairs = self.state_pairs(model)
        inputs: dict[str, np.ndarray] = {"x": sine_input(values), **(states or {})}
        out = self.infer(model, inputs, outputs=["y", *pairs.values()])
        return out["y"], {state_in: out[state_out] for state_in, state_out in pairs.items()}

    def state_pairs(self, model: str, version: str = "") -> dict[str, str]:
        """The model's state inputs and the outputs that carry them on, as its metadata
        lists them (parameters `state_inputs`, `state_outputs`): {"h0": "hn", ...}."""
        parameters = self.model_metadata(model, version).parameters
        names = [
            parameters[key].string_param.split(",") if key in parameters else []
            for key in ("state_inputs", "state_outputs")
        ]
        return dict(zip(*names, strict=True))

    def tag(self, text: str, model: str = "tagger-gru") -> str:
        return self.infer(model, {"text": [text]}, outputs=["text_out"])["text_out"][0].decode()

    def translate(
        self, text: str, model: str = "seq2seq-gru", max_output_length: int | None = None
    ) -> str:
        parameters = {} if max_output_length is None else {"max_output_length": max_output_length}
        out = self.infer(model, {"text": [text]}, outputs=["text_out"], parameters=parameters)
        return out["text_out"][0].decode()
