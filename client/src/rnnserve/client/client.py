"""RnnClient: numpy in, numpy out over the Open Inference Protocol's gRPC API.

Every method takes a `timeout` (seconds; None: the client's `timeout_s`) and raises the
InferenceError subclass of the status the call failed with (client/errors.py). Text
outputs come as `str`. It is an `api.Client`: RestClient has the same methods over REST,
and `rnnserve.client.aio.AsyncRnnClient` the same to await; all share everything but the
calls themselves (client/api.py, client/wire.py, client/metadata.py, client/connection.py).
Only gRPC streams (`stream`).
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any, ClassVar

import grpc

from rnnserve.client.api import Client, Headers
from rnnserve.client.connection import Connection
from rnnserve.client.errors import from_rpc_error
from rnnserve.client.metadata import ModelMetadata, ServerMetadata
from rnnserve.client.stream import Stream
from rnnserve.client.wire import (
    InferResult,
    build_request,
    decode_response,
    session_controls,
    sine_input,
)
from rnnserve.protocol import messages as pb

# What callers have imported from here since before client/wire.py held it.
__all__ = [
    "InferResult", "RnnClient", "build_request", "decode_response", "session_controls",
    "sine_input",
]  # fmt: skip


class RnnClient(Connection, Client):
    GRPC: ClassVar[ModuleType] = grpc

    def close(self) -> None:
        self.channel.close()

    def _call(self, method: str, request: Any, timeout: float | None, headers: Headers = ()) -> Any:
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

    # Inference -------------------------------------------------------------------------

    def _infer(self, request: Any, timeout: float | None, headers: Headers) -> InferResult:
        return decode_response(self._call("ModelInfer", request, timeout, headers))

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
