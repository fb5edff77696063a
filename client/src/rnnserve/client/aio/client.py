"""AsyncRnnClient: RnnClient on grpc.aio, every method a coroutine (`stream` an async
iterator) with the same name, arguments, timeouts, errors and results.

Only the calls are its own: requests, responses, metadata, errors and text decoding are
the sync client's (client/wire.py, client/metadata.py, client/errors.py). Make it, and use
it, inside one running event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from types import ModuleType
from typing import Any, ClassVar

import grpc
import numpy as np

from rnnserve.client.aio.stream import AsyncStream
from rnnserve.client.connection import Connection
from rnnserve.client.errors import from_rpc_error
from rnnserve.client.metadata import ModelMetadata, ServerMetadata
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


class AsyncRnnClient(Connection):
    GRPC: ClassVar[ModuleType] = grpc.aio

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncRnnClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(
        self,
        method: str,
        request: Any,
        timeout: float | None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> Any:
        """One unary call; its failure raised as the InferenceError of its status."""
        try:
            return await getattr(self.stub, method)(
                request, timeout=self.timeout(timeout), metadata=self.headers(headers)
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    # Health and metadata -------------------------------------------------------------

    async def server_live(self, *, timeout: float | None = None) -> bool:
        return bool((await self._call("ServerLive", pb.ServerLiveRequest(), timeout)).live)

    async def server_ready(self, *, timeout: float | None = None) -> bool:
        return bool((await self._call("ServerReady", pb.ServerReadyRequest(), timeout)).ready)

    async def model_ready(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> bool:
        request = pb.ModelReadyRequest(name=model, version=version)
        return bool((await self._call("ModelReady", request, timeout)).ready)

    async def server_metadata(self, *, timeout: float | None = None) -> ServerMetadata:
        reply = await self._call("ServerMetadata", pb.ServerMetadataRequest(), timeout)
        return ServerMetadata.from_proto(reply)

    async def model_metadata(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> ModelMetadata:
        request = pb.ModelMetadataRequest(name=model, version=version)
        return ModelMetadata.from_proto(await self._call("ModelMetadata", request, timeout))

    async def state_pairs(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> dict[str, str]:
        return (await self.model_metadata(model, version, timeout=timeout)).state_pairs

    # Inference -------------------------------------------------------------------------

    async def infer(
        self,
        model: str,
        inputs: Inputs,
        outputs: Sequence[str] = (),
        parameters: Mapping[str, Parameter] | None = None,
        version: str = "",
        *,
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        request = build_request(model, inputs, outputs, parameters, version)
        return (await self.infer_response_of(request, timeout=timeout)).outputs

    async def infer_response(
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
        return await self.infer_response_of(request, timeout=timeout)

    async def infer_response_of(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> InferResult:
        reply = await self._call("ModelInfer", request, timeout, headers)
        return await self.text_decoded(decode_response(reply), timeout)

    async def text_decoded(self, result: InferResult, timeout: float | None = None) -> InferResult:
        key = self.text.unknown(result)
        if key is not None:
            self.text.learn(key, await self.model_metadata(*key, timeout=timeout))
        return self.text.decoded(result)

    async def step_sessions(
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
        inputs = {**inputs, **session_controls(ids, start, end, offsets)}
        result = await self.infer_response(model, inputs, outputs, version=version, timeout=timeout)
        return row_errors(result)

    async def stream(
        self, requests: Iterable[Any] | AsyncIterable[Any], *, timeout: float | None = None
    ) -> AsyncIterator[InferResult]:
        stream = AsyncStream(self, requests, self.timeout(timeout))
        try:
            while (result := await stream.receive()) is not None:
                yield result
        finally:
            stream.cancel()

    # The default models ------------------------------------------------------------

    async def infer_sine(
        self,
        values: Sequence[float] | np.ndarray,
        states: Mapping[str, np.ndarray] | None = None,
        model: str = "sine-lstm",
        *,
        timeout: float | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        pairs = await self.state_pairs(model, timeout=timeout)
        inputs = {"x": sine_input(values), **(states or {})}
        out = await self.infer(model, inputs, ["y", *pairs.values()], timeout=timeout)
        return sine_result(out, pairs)

    async def tag(
        self, text: str, model: str = "tagger-gru", *, timeout: float | None = None
    ) -> str:
        out = await self.infer(model, {"text": [text]}, ["text_out"], timeout=timeout)
        return text_of(out["text_out"])

    async def translate(
        self,
        text: str,
        model: str = "seq2seq-gru",
        max_output_length: int | None = None,
        *,
        timeout: float | None = None,
    ) -> str:
        parameters = translate_parameters(max_output_length)
        out = await self.infer(model, {"text": [text]}, ["text_out"], parameters, timeout=timeout)
        return text_of(out["text_out"])
