"""RnnClient: numpy in, numpy out over the Open Inference Protocol's gRPC API.

Tensor encoding is service/grpc/converter.py's, shared with the server, so both ends
agree on the wire format by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TypeVar

import grpc
import numpy as np

from client.errors import InferenceError
from service.grpc import converter
from service.protocol.generated import grpc_service_pb2 as pb
from service.protocol.generated import grpc_service_pb2_grpc as pb_grpc
from service.types import InferRequest, InferResponse, Parameter

T = TypeVar("T")


def call(rpc: Callable[[], T]) -> T:
    """Run one gRPC call, turning its failure into an InferenceError."""
    try:
        return rpc()
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
) -> pb.ModelInferRequest:
    request = InferRequest(
        model_name=model,
        model_version=version,
        inputs=[converter.tensor_from_array(name, data) for name, data in inputs.items()],
        outputs=list(outputs),
        parameters=dict(parameters or {}),
    )
    return converter.request_to_proto(request)


def outputs_of(response: InferResponse) -> dict[str, np.ndarray]:
    return {tensor.name: tensor.data for tensor in response.outputs}


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
        self.stub = pb_grpc.GRPCInferenceServiceStub(self._channel)

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

    def server_metadata(self) -> pb.ServerMetadataResponse:
        request = pb.ServerMetadataRequest()
        return call(lambda: self.stub.ServerMetadata(request, timeout=self.timeout_s))

    def model_metadata(self, model: str, version: str = "") -> pb.ModelMetadataResponse:
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
        return outputs_of(self.infer_response(model, inputs, outputs, parameters, version))

    def infer_response(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray | str | list],
        outputs: Sequence[str] = (),
        parameters: Mapping[str, Parameter] | None = None,
        version: str = "",
    ) -> InferResponse:
        return self.infer_response_of(build_request(model, inputs, outputs, parameters, version))

    def infer_response_of(self, request: pb.ModelInferRequest) -> InferResponse:
        reply = call(lambda: self.stub.ModelInfer(request, timeout=self.timeout_s))
        return converter.response_from_proto(reply)

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
        out = outputs_of(response)
        errors = [message.decode() for message in out.pop("sequence_error").reshape(-1)]
        return out, errors

    def stream(self, requests: Iterator[pb.ModelInferRequest]) -> Iterator[InferResponse]:
        """ModelStreamInfer: responses as they come; an error in the stream raises."""
        return self.stream_replies(self.stub.ModelStreamInfer(requests))

    @staticmethod
    def stream_replies(
        replies: Iterator[pb.ModelStreamInferResponse],
    ) -> Iterator[InferResponse]:
        try:
            for reply in replies:
                if reply.error_message:
                    # The stream stays open: the caller may go on sending.
                    raise InferenceError("STREAM_ERROR", reply.error_message)
                yield converter.response_from_proto(reply.infer_response)
        except grpc.RpcError as error:
            raise InferenceError(error.code().name, error.details() or "") from None

    # The default models ------------------------------------------------------------

    def infer_sine(
        self,
        values: Sequence[float] | np.ndarray,
        states: Mapping[str, np.ndarray] | None = None,
        model: str = "sine-lstm",
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """y for x = `values`, and the final states keyed `h0`/`c0` to pass to the next call."""
        inputs: dict[str, np.ndarray] = {"x": sine_input(values)}
        inputs.update(states or {})
        state_outputs = ["hn", "cn"] if model.endswith("lstm") else ["hn"]
        out = self.infer(model, inputs, outputs=["y", *state_outputs])
        return out["y"], {name.replace("n", "0"): out[name] for name in state_outputs}

    def tag(self, text: str, model: str = "tagger-gru") -> str:
        return self.infer(model, {"text": [text]}, outputs=["text_out"])["text_out"][0].decode()

    def translate(
        self, text: str, model: str = "seq2seq-gru", max_output_length: int | None = None
    ) -> str:
        parameters = {} if max_output_length is None else {"max_output_length": max_output_length}
        out = self.infer(model, {"text": [text]}, outputs=["text_out"], parameters=parameters)
        return out["text_out"][0].decode()
