"""GRPCInferenceService: each RPC converts, calls the DataPlane and converts back.

Every unary RPC is answered through `Answering` (answering.py: admitted, recorded, its
failure a status), ModelInfer by its own compiled handler (receiving.py). A stream's
credentials are the whole stream's, so a refusal ends it; a failed request on a stream,
where the stream stays open and no trailer can be sent, is answered with its status and
details as parameters of the error's `infer_response`. Once the server drains (SIGTERM), a
stream waiting for its next request ends at once, UNAVAILABLE ("shutting down; retry on
another instance"), and one answering a request ends so once it has answered it: an idle
stream never holds a shutdown.
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
    Recording,
    request_id_of,
    sequence_id_of,
)
from rnnserve.service.auth import Authenticator
from rnnserve.service.dataplane import DataPlane
from rnnserve.service.errors import PermissionDenied, ServiceError, Unauthenticated, client_error
from rnnserve.service.grpc import converter
from rnnserve.service.grpc.answering import Answering, Context, headers_of
from rnnserve.service.types import InferRequest

SHUTTING_DOWN = "the server is shutting down; retry on another instance"


class InferenceServicer:
    def __init__(self, dataplane: DataPlane, authenticator: Authenticator) -> None:
        self._dataplane = dataplane
        self.answering = Answering(Recorder("grpc", dataplane.labels), authenticator)
        self._answer = self.answering.answer

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
        requests = _Requests(request_iterator, self._dataplane.draining)
        try:
            while (request := await requests.next()) is not None:
                request_id = request.id or stream_id
                if self._dataplane.answers_once(request.model_name):
                    yield await self._stream_reply(request, request_id, headers, context)
                    continue
                replies = self._stream_replies(request, request_id, headers, context)
                async for reply in replies:
                    yield reply
        finally:
            requests.close()
        if self._dataplane.draining.is_set():
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)

    async def _stream_reply(
        self, request: Any, request_id: str, headers: dict[str, str], context: Context
    ) -> Any:
        """The one reply of a request answered once (every task's but token decoding's):
        `_stream_replies` without an async generator per request."""
        with self._recorded(request, request_id) as call:
            try:
                infer_request, typed = self._received(request, call, headers, context)
                response = await self._dataplane.infer(infer_request)
                return converter.stream_response_to_proto(response, typed)
            except Exception as failure:
                reply, refusal = self._failed(request, call, failure)
        if refusal is not None:  # the stream's credentials: no later request would pass
            await context.abort(grpc.StatusCode[refusal.code], refusal.message)
        return reply

    async def _stream_replies(
        self, request: Any, request_id: str, headers: dict[str, str], context: Context
    ) -> AsyncIterator[Any]:
        """A request's replies, one per decoded token, or its failure's."""
        refusal: ServiceError | None = None
        with self._recorded(request, request_id) as call:
            try:
                infer_request, typed = self._received(request, call, headers, context)
                async for response in self._dataplane.stream_infer(infer_request):
                    yield converter.stream_response_to_proto(response, typed)
            except Exception as failure:
                reply, refusal = self._failed(request, call, failure)
                if reply is not None:
                    yield reply
        if refusal is not None:
            await context.abort(grpc.StatusCode[refusal.code], refusal.message)

    def _recorded(self, request: Any, request_id: str) -> Recording:
        return self.answering.recorder.call(
            "ModelStreamInfer", request.model_name, request.model_version, request_id
        )

    def _received(
        self, request: Any, call: Call, headers: dict[str, str], context: Context
    ) -> tuple[InferRequest, bool]:
        """A stream's request admitted (its principal checked) and converted; whether it
        sent typed contents (its replies do too)."""
        self.answering.admit(call, headers, context)
        infer_request = converter.request_from_proto(request, call.principal)
        call.sequence_id = sequence_id_of(infer_request.parameters)
        return infer_request, converter.sends_contents(request)

    @staticmethod
    def _failed(request: Any, call: Call, failure: Exception) -> tuple[Any, ServiceError | None]:
        """A failed request's reply, in the stream, which stays open for the next request;
        or, when the stream's credentials were refused, no reply and the refusal that
        ends the stream."""
        if isinstance(failure, Unauthenticated | PermissionDenied):
            call.code = failure.code
            return None, failure
        error = client_error(failure, f"ModelStreamInfer for model {request.model_name!r}")
        call.code = error.code
        return converter.stream_error_to_proto(request, error), None


class _Requests:
    """A stream's requests, which end once the data plane drains: a read waiting for the
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
            return await anext(self._requests, None)
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
