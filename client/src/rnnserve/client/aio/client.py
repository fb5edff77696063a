"""AsyncRnnClient: RnnClient on grpc.aio, every method a coroutine (`stream` an async
iterator) with the same name, arguments, timeouts, errors and results.

Only the calls are its own: what is built on them is api.AsyncClient's (shared with
AsyncRestClient); requests, responses, metadata, errors and text decoding are the sync
client's (client/wire.py, client/metadata.py, client/errors.py). Make it, and use it,
inside one running event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable
from types import ModuleType
from typing import Any, ClassVar

import grpc

from rnnserve.client.aio.stream import AsyncStream
from rnnserve.client.api import AsyncClient, Headers
from rnnserve.client.connection import Connection
from rnnserve.client.errors import from_rpc_error
from rnnserve.client.metadata import ModelMetadata, ServerMetadata
from rnnserve.client.wire import InferResult, decode_response
from rnnserve.protocol import messages as pb


class AsyncRnnClient(Connection, AsyncClient):
    GRPC: ClassVar[ModuleType] = grpc.aio

    async def close(self) -> None:
        await self.channel.close()

    async def _call(
        self, method: str, request: Any, timeout: float | None, headers: Headers = ()
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

    # Inference -------------------------------------------------------------------------

    async def _infer(self, request: Any, timeout: float | None, headers: Headers) -> InferResult:
        return decode_response(await self._call("ModelInfer", request, timeout, headers))

    async def stream(
        self, requests: Iterable[Any] | AsyncIterable[Any], *, timeout: float | None = None
    ) -> AsyncIterator[InferResult]:
        stream = AsyncStream(self, requests, self.timeout(timeout))
        try:
            while (result := await stream.receive()) is not None:
                yield result
        finally:
            stream.cancel()
