"""RnnClient: numpy in, numpy out over the Open Inference Protocol's gRPC API.

Tensor encoding is rnnserve.protocol.codec's, shared with the server, so both ends agree
on the wire format by construction. The client imports nothing of the server. It speaks
TLS (server certificates checked against `root_certificates`, or the system's roots; with
`private_key` and `certificate_chain`, mutual TLS) and sends a bearer token with every
call when given one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import grpc
import numpy as np

from rnnserve.client.errors import InferenceError
from rnnserve.protocol import codec, rpc
from rnnserve.protocol import messages as pb
from rnnserve.protocol.codec import Parameter
from rnnserve.protocol.sequences import ERROR_CODE

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
        raise inference_error(error) from None


def inference_error(error: grpc.RpcError) -> InferenceError:
    """A failed call as an InferenceError, with its trailing metadata as details
    (`sequence-offset` -> `sequence_offset`)."""
    trailers = error.trailing_metadata() or ()  # type: ignore[attr-defined]
    details: dict[str, Parameter] = {
        key.replace("-", "_"): value for key, value in trailers if isinstance(value, str)
    }
    return InferenceError(error.code().name, error.details() or "", details)  # type: ignore[attr-defined]


def stream_error(reply: Any) -> InferenceError:
    """An error a stream reported (the stream stays open): its status code and details come
    as parameters of its response, where the server sends them."""
    details = codec.parameters_from_proto(reply.infer_response.parameters, "error response")
    code = str(details.pop(ERROR_CODE, "STREAM_ERROR"))
    return InferenceError(code, reply.error_message, details)


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
    ids: Sequence[int] | Sequence[str],
    start: bool | Sequence[bool],
    end: bool | Sequence[bool],
    offsets: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """The control inputs of a multi-session request: row i is a step of session ids[i].
    Integer ids go as UINT64, string ids as BYTES; a single flag applies to every row;
    `offsets` (each row's sequence's time steps before it) go as INT64."""
    rows = len(ids)
    all_ints = all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
    controls = {
        "sequence_id": np.asarray(ids, np.uint64) if all_ints else np.asarray(ids, object),
        "sequence_start": np.broadcast_to(np.asarray(start, np.bool_), (rows,)).copy(),
        "sequence_end": np.broadcast_to(np.asarray(end, np.bool_), (rows,)).copy(),
    }
    if offsets is not None:
        controls["sequence_offset"] = np.asarray(offsets, np.int64)
    return controls


class _Metadata(NamedTuple):
    """grpc.ClientCallDetails with metadata added."""

    method: str
    timeout: float | None
    metadata: Sequence[tuple[str, str]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class _Headers(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Sends `headers` (gRPC metadata) with every call."""

    def __init__(self, headers: Sequence[tuple[str, str]]) -> None:
        self._headers = list(headers)

    def _with_headers(self, details: Any) -> _Metadata:
        return _Metadata(
            details.method, details.timeout, [*(details.metadata or ()), *self._headers],
            details.credentials, details.wait_for_ready, details.compression,
        )  # fmt: skip

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_headers(details), request)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_headers(details), requests)


def _read(path: str | Path | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


class RnnClient:
    def __init__(
        self,
        address: str = "localhost:8001",
        timeout_s: float | None = 30.0,
        *,
        tls: bool = False,
        root_certificates: str | Path | None = None,
        private_key: str | Path | None = None,
        certificate_chain: str | Path | None = None,
        token: str | None = None,
    ) -> None:
        """A client of the server at `address`. With `tls` (implied by any certificate
        file), the server's certificate is checked against `root_certificates` (PEM; the
        system's roots when None); `private_key` and `certificate_chain` (PEM) are the
        client's own, for mutual TLS. `token` goes with every call as
        `authorization: Bearer <token>`."""
        self.address = address
        self.timeout_s = timeout_s
        options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        if tls or root_certificates or private_key or certificate_chain:
            credentials = grpc.ssl_channel_credentials(
                _read(root_certificates), _read(private_key), _read(certificate_chain)
            )
            channel = grpc.secure_channel(address, credentials, options=options)
        else:
            channel = grpc.insecure_channel(address, options=options)
        self._channel = channel
        if token is not None:
            channel = grpc.intercept_channel(
                channel, _Headers([("authorization", f"Bearer {token}")])
            )
        self.stub = rpc.Stub(channel)

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

    def infer_response_of(
        self, request: Any, metadata: Sequence[tuple[str, str]] = ()
    ) -> InferResult:
        """ModelInfer with a request message built already (see `build_request`), and
        `metadata` (gRPC headers) sent with it."""
        reply = call(
            lambda: self.stub.ModelInfer(
                request, timeout=self.timeout_s, metadata=tuple(metadata) or None
            )
        )
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
        offsets: Sequence[int] | None = None,
    ) -> tuple[dict[str, np.ndarray], list[str]]:
        """One step of many sessions in one request: row i of every input is a step of
        session ids[i], starting it where start[i], ending it where end[i], beginning at
        time step offsets[i] when given. Returns the outputs (`sequence_offset` among them:
        each row's sequence's time steps after the request) and each row's error ("" for a
        row that stepped; a failed row's outputs are zeros or empty strings and its session
        is unchanged)."""
        controls = session_controls(ids, start, end, offsets)
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
                    raise stream_error(reply)
                yield decode_response(reply.infer_response)
        except grpc.RpcError as error:
            raise inference_error(error) from None

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
