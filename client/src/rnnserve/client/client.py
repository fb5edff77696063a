"""RnnClient: numpy in, numpy out over the Open Inference Protocol's gRPC API.

Every method takes a `timeout` (seconds; None: the client's `timeout_s`) and raises the
InferenceError subclass of the status the call failed with (client/errors.py). Text
outputs come as `str`. `rnnserve.client.aio.AsyncRnnClient` has the same methods, to
await; both share everything but the calls themselves (client/wire.py, client/metadata.py,
client/connection.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from types import ModuleType
from typing import Any, ClassVar

import grpc
import numpy as np

from rnnserve.client.connection import Connection
from rnnserve.client.errors import from_rpc_error
from rnnserve.client.metadata import ModelMetadata, ServerMetadata
from rnnserve.client.stream import Stream
from rnnserve.client.wire import (
    InferResult,
    Inputs,
    build_request,
    decode_response,
    row_errors,
    session_controls,
    sine_input,
    sine_result,
    text_of,
    translate_parameters,
)
from rnnserve.protocol import messages as pb
from rnnserve.protocol.codec import Parameter

# What callers have imported from here since before client/wire.py held it.
__all__ = [
    "InferResult", "RnnClient", "build_request", "decode_response", "session_controls",
    "sine_input",
]  # fmt: skip


class RnnClient(Connection):
    GRPC: ClassVar[ModuleType] = grpc

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> RnnClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(
        self,
        method: str,
        request: Any,
        timeout: float | None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> Any:
        """One unary call; its failure raised as the InferenceError of its status."""
        try:
            return getattr(self.stub, method)(
                request, timeout=self.timeout(timeout), metadata=self.headers(headers)
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    # Health and metadata -------------------------------------------------------------

    def server_live(self, *, timeout: float | None = None) -> bool:
        return bool(self._call("ServerLive", pb.ServerLiveRequest(), timeout).live)

    def server_ready(self, *, timeout: float | None = None) -> bool:
        return bool(self._call("ServerReady", pb.ServerReadyRequest(), timeout).ready)

    def model_ready(self, model: str, version: str = "", *, timeout: float | None = None) -> bool:
        request = pb.ModelReadyRequest(name=model, version=version)
        return bool(self._call("ModelReady", request, timeout).ready)

    def server_metadata(self, *, timeout: float | None = None) -> ServerMetadata:
        reply = self._call("ServerMetadata", pb.ServerMetadataRequest(), timeout)
        return ServerMetadata.from_proto(reply)

    def model_metadata(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> ModelMetadata:
        request = pb.ModelMetadataRequest(name=model, version=version)
        return ModelMetadata.from_proto(self._call("ModelMetadata", request, timeout))

    def state_pairs(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> dict[str, str]:
        """The model's state inputs and the outputs that carry them on: {"h0": "hn", ...}."""
        return self.model_metadata(model, version, timeout=timeout).state_pairs

    # Inference -------------------------------------------------------------------------

    def infer(
        self,
        model: str,
        inputs: Inputs,
        outputs: Sequence[str] = (),
        parameters: Mapping[str, Parameter] | None = None,
        version: str = "",
        *,
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Run one request; returns output name -> array."""
        request = build_request(model, inputs, outputs, parameters, version)
        return self.infer_response_of(request, timeout=timeout).outputs

    def infer_response(
        self,
        model: str,
        inputs: Inputs,
        outputs: Sequence[str] = (),
        parameters: Mapping[str, Parameter] | None = None,
        version: str = "",
        *,
        timeout: float | None = None,
    ) -> InferResult:
        request = build_request(model, inputs, outputs, parameters, version)
        return self.infer_response_of(request, timeout=timeout)

    def infer_response_of(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> InferResult:
        """ModelInfer with a request message built already (see `build_request`), and
        `headers` (gRPC metadata) sent with it besides the client's own."""
        reply = self._call("ModelInfer", request, timeout, headers)
        return self.text_decoded(decode_response(reply), timeout)

    def text_decoded(self, result: InferResult, timeout: float | None = None) -> InferResult:
        """`result` with its text outputs as `str`, once the model's metadata said which."""
        key = self.text.unknown(result)
        if key is not None:
            self.text.learn(key, self.model_metadata(*key, timeout=timeout))
        return self.text.decoded(result)

    def step_sessions(
        self,
        model: str,
        ids: Sequence[int] | Sequence[str],
        inputs: Inputs,
        start: bool | Sequence[bool] = False,
        end: bool | Sequence[bool] = False,
        outputs: Sequence[str] = (),
        version: str = "",
        offsets: Sequence[int] | None = None,
        *,
        timeout: float | None = None,
    ) -> tuple[dict[str, np.ndarray], list[str]]:
        """One step of many sessions in one request: row i of every input is a step of
        session ids[i], starting it where start[i], ending it where end[i], beginning at
        time step offsets[i] when given. Returns the outputs (`sequence_offset` among them:
        each row's sequence's time steps after the request) and each row's error ("" for a
        row that stepped; a failed row's outputs are zeros or empty strings and its session
        is unchanged)."""
        inputs = {**inputs, **session_controls(ids, start, end, offsets)}
        result = self.infer_response(model, inputs, outputs, version=version, timeout=timeout)
        return row_errors(result)

    def stream(
        self, requests: Iterator[Any], *, timeout: float | None = None
    ) -> Iterator[InferResult]:
        """ModelStreamInfer: each response as it comes; an error in the stream raises.
        `timeout` is the whole stream's deadline."""
        stream = Stream(self, requests, self.timeout(timeout))
        try:
            while (result := stream.receive()) is not None:
                yield result
        finally:
            stream.cancel()

    # The default models ------------------------------------------------------------

    def infer_sine(
        self,
        values: Sequence[float] | np.ndarray,
        states: Mapping[str, np.ndarray] | None = None,
        model: str = "sine-lstm",
        *,
        timeout: float | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """y for x = `values`, and the final states keyed by the state inputs they feed
        (`h0`, `c0`), to pass to the next call."""
        pairs = self.state_pairs(model, timeout=timeout)
        inputs = {"x": sine_input(values), **(states or {})}
        out = self.infer(model, inputs, ["y", *pairs.values()], timeout=timeout)
        return sine_result(out, pairs)

    def tag(self, text: str, model: str = "tagger-gru", *, timeout: float | None = None) -> str:
        out = self.infer(model, {"text": [text]}, ["text_out"], timeout=timeout)
        return text_of(out["text_out"])

    def translate(
        self,
        text: str,
        model: str = "seq2seq-gru",
        max_output_length: int | None = None,
        *,
        timeout: float | None = None,
    ) -> str:
        parameters = translate_parameters(max_output_length)
        out = self.infer(model, {"text": [text]}, ["text_out"], parameters, timeout=timeout)
        return text_of(out["text_out"])
