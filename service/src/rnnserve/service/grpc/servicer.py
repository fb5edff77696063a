"""GRPCInferenceService: each RPC converts, calls the DataPlane and converts back.

Every unary RPC is answered through `Answering` (answering.py: admitted, recorded, its
failure a status), ModelInfer by its own compiled handler (receiving.py), and each request
of a stream by compiled code too (stream_requests.py: a refusal of the stream's credentials
ends the stream; another failure is a reply in it, which stays open). Once the server
drains (SIGTERM), a stream waiting for its next request ends at once, UNAVAILABLE
("shutting down; retry on another instance"), and one answering a request ends so once it
has answered it: an idle stream never holds a shutdown.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from rnnserve.protocol import messages as pb
from rnnserve.service import triton
from rnnserve.service.access import (
    REQUEST_ID_HEADER,
    Call,
    Recorder,
    request_id_of,
)
from rnnserve.service.auth import Authenticator
from rnnserve.service.dataplane import DataPlane
from rnnserve.service.grpc import converter
from rnnserve.service.grpc.answering import Answering, Context, headers_of
from rnnserve.service.grpc.stream_requests import StreamRequests

SHUTTING_DOWN = "the server is shutting down; retry on another instance"


class InferenceServicer:
    def __init__(self, dataplane: DataPlane, authenticator: Authenticator) -> None:
        self._dataplane = dataplane
        self.answering = Answering(Recorder("grpc", dataplane.labels), authenticator)
        self._answer = self.answering.answer
        self._requests = StreamRequests(self.answering, dataplane)

    # Health and metadata ------------------------------------------------------------
    # ServerLive and ServerReady are probes, called every few seconds by orchestrators:
    # they stay out of the request metrics.

    async def ServerLive(self, request: Any, context: Context) -> Any:
        async def work(call: Call) -> Any:
            return pb.ServerLiveResponse(live=self._dataplane.live())

        return await self._answer("ServerLive", "", "", context, work, counted=False)

    async def ServerReady(self, request: Any, context: Context) -> Any:
        async def work(call: Call) -> Any:
            return pb.ServerReadyResponse(ready=self._dataplane.ready())

        return await self._answer("ServerReady", "", "", context, work, counted=False)

    async def ServerMetadata(self, request: Any, context: Context) -> Any:
        async def work(call: Call) -> Any:
            return converter.server_metadata_to_proto(self._dataplane.server_metadata())

        return await self._answer("ServerMetadata", "", "", context, work)

    async def ModelReady(self, request: Any, context: Context) -> Any:
        async def work(call: Call) -> Any:
            return pb.ModelReadyResponse(
                ready=self._dataplane.model_ready(request.name, request.version)
            )

        return await self._answer("ModelReady", request.name, request.version, context, work)

    async def ModelMetadata(self, request: Any, context: Context) -> Any:
        async def work(call: Call) -> Any:
            metadata = self._dataplane.model_metadata(request.name, request.version)
            return converter.model_metadata_to_proto(metadata)

        return await self._answer("ModelMetadata", request.name, request.version, context, work)

    async def ModelConfig(self, request: Any, context: Context) -> Any:
        async def work(call: Call) -> Any:
            config = self._dataplane.model_config(request.name, request.version)
            return pb.ModelConfigResponse(config=triton.model_config_to_proto(config))

        return await self._answer("ModelConfig", request.name, request.version, context, work)

    async def ModelStatistics(self, request: Any, context: Context) -> Any:
        async def work(call: Call) -> Any:
            stats = self._dataplane.model_statistics(request.name, request.version)
            return triton.model_statistics_to_proto(stats)

        return await self._answer("ModelStatistics", request.name, request.version, context, work)

    async def RepositoryIndex(self, request: Any, context: Context) -> Any:
        async def work(call: Call) -> Any:
            entries = self._dataplane.repository_index()
            return converter.repository_index_to_proto(entries, ready_only=request.ready)

        return await self._answer("RepositoryIndex", "", "", context, work)

    async def RepositoryModelLoad(self, request: Any, context: Context) -> Any:
        async def work(call: Call) -> Any:
            self._dataplane.check_repository_name(request.repository_name)
            await self._dataplane.load_model(request.model_name, list(request.parameters))
            return pb.RepositoryModelLoadResponse()

        return await self._answer("RepositoryModelLoad", request.model_name, "", context, work)

    async def RepositoryModelUnload(self, request: Any, context: Context) -> Any:
        async def work(call: Call) -> Any:
            self._dataplane.check_repository_name(request.repository_name)
            await self._dataplane.unload_model(request.model_name, list(request.parameters))
            return pb.RepositoryModelUnloadResponse()

        return await self._answer("RepositoryModelUnload", request.model_name, "", context, work)

    # Inference ----------------------------------------------------------------------

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[Any], context: Context
    ) -> AsyncIterator[Any]:
        # One request at a time, in arrival order: steps of a sequence depend on the
        # state the previous step left. Other streams run concurrently.
        headers = headers_of(context)
        stream_id = request_id_of("", headers)
        if stream_id:
            await context.send_initial_metadata(((REQUEST_ID_HEADER, stream_id),))
        reading = _Reading(request_iterator, self._dataplane.draining)
        try:
            while (request := await reading.next()) is not None:
                request_id = request.id or stream_id
                if self._dataplane.answers_once(request.model_name):
                    yield await self._requests.reply(request, request_id, headers, context)
                    continue
                replies = self._stream_replies(request, request_id, headers, context)
                async for reply in replies:
                    yield reply
        finally:
            reading.close()
        if self._dataplane.draining.is_set():
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)

    async def _stream_replies(
        self, request: Any, request_id: str, headers: dict[str, str], context: Context
    ) -> AsyncIterator[Any]:
        """A request's replies, one per decoded token, or its failure's."""
        requests, refusal = self._requests, None
        with requests.recorded(request, request_id) as call:
            try:
                infer_request, typed = requests.received(request, call, headers, context)
                async for response in self._dataplane.stream_infer(infer_request):
                    yield converter.stream_response_to_proto(response, typed)
            except Exception as failure:
                reply, refusal = requests.failed(request, call, failure)
                if reply is not None:
                    yield reply
        if refusal is not None:
            await context.abort(grpc.StatusCode[refusal.code], refusal.message)


class _Reading:
    """Reading a stream's requests, which end once the data plane drains: a read waiting for the
    next request is cancelled then, while a request being answered is answered first.
    Reads are plain awaits of the stream; only the drain, once, wakes a waiting one."""

    def __init__(self, requests: AsyncIterator[Any], draining: asyncio.Event) -> None:
        self._requests = aiter(requests)
        self._handler = asyncio.current_task()
        self._reading = self._drained = False
        self._draining = asyncio.ensure_future(draining.wait())
        self._draining.add_done_callback(self._drain)

    def _drain(self, waited: asyncio.Future[Any]) -> None:
        if waited.cancelled():  # the stream ended first (close)
            return
        self._drained = True
        if self._reading and self._handler is not None:
            self._handler.cancel()

    async def next(self) -> Any:
        """The next request; None at the stream's end, or once the data plane drains."""
        if self._drained:
            return None
        self._reading = True
        try:
            # __anext__ itself: anext()'s default wraps every read in an awaitable of its own.
            return await self._requests.__anext__()
        except StopAsyncIteration:
            return None
        except asyncio.CancelledError:
            if not self._drained:  # the call itself was cancelled
                raise
            if self._handler is not None:
                self._handler.uncancel()  # the drain's cancellation, handled here
            return None
        finally:
            self._reading = False

    def close(self) -> None:
        self._draining.cancel()
