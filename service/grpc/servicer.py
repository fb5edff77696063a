"""GRPCInferenceService: each RPC converts, calls the DataPlane and converts back.

Client-visible failures are `ServiceError`s and become their gRPC status with the
message verbatim. Anything else is a bug: its traceback goes to the server log and the
client gets INTERNAL with a generic message, never the traceback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc

from service import metrics
from service.dataplane import DataPlane
from service.errors import ServiceError, Unavailable
from service.grpc import converter
from service.protocol.generated import grpc_service_pb2 as pb
from service.protocol.generated import grpc_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

T = TypeVar("T")
INTERNAL_MESSAGE = "internal server error; the server log has the details"


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane) -> None:
        self._dataplane = dataplane
        self._draining = False

    def drain(self) -> None:
        """Refuse new inference (streams stay open until their clients finish)."""
        self._draining = True

    def _check_accepting(self) -> None:
        if self._draining:
            raise Unavailable("the server is shutting down; retry on another instance")
        if not self._dataplane.ready():
            raise Unavailable("the server is still loading models; retry shortly")

    async def _answer(
        self,
        rpc: str,
        model: str,
        version: str,
        context: grpc.aio.ServicerContext,
        work: Callable[[], Awaitable[T]],
    ) -> T:
        """Run one RPC's work, record its metrics, and turn failures into statuses."""
        start = time.perf_counter()
        code = "OK"
        try:
            result = await work()
            # Label inference with the version that answered, not the one asked for ("").
            version = getattr(result, "model_version", version) or version
            return result
        except ServiceError as error:
            code = error.code
            await context.abort(grpc.StatusCode[code], error.message)
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception:
            code = "INTERNAL"
            log.exception("%s failed for model %r", rpc, model)
            await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
        finally:
            _record(rpc, model, version, code, time.perf_counter() - start)
        raise AssertionError("unreachable: context.abort raises")

    # Health and metadata ------------------------------------------------------------
    # ServerLive and ServerReady are probes, called every few seconds by orchestrators:
    # they stay out of the request metrics.

    async def ServerLive(self, request: pb.ServerLiveRequest, context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self._dataplane.live())

    async def ServerReady(self, request: pb.ServerReadyRequest, context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._dataplane.ready() and not self._draining)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context
    ) -> pb.ServerMetadataResponse:
        async def work() -> pb.ServerMetadataResponse:
            return converter.server_metadata_to_proto(self._dataplane.server_metadata())

        return await self._answer("ServerMetadata", "", "", context, work)

    async def ModelReady(self, request: pb.ModelReadyRequest, context) -> pb.ModelReadyResponse:
        async def work() -> pb.ModelReadyResponse:
            return pb.ModelReadyResponse(
                ready=self._dataplane.model_ready(request.name, request.version)
            )

        return await self._answer("ModelReady", request.name, request.version, context, work)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context
    ) -> pb.ModelMetadataResponse:
        async def work() -> pb.ModelMetadataResponse:
            metadata = self._dataplane.model_metadata(request.name, request.version)
            return converter.model_metadata_to_proto(metadata)

        return await self._answer("ModelMetadata", request.name, request.version, context, work)

    async def ModelConfig(self, request: pb.ModelConfigRequest, context) -> pb.ModelConfigResponse:
        async def work() -> pb.ModelConfigResponse:
            info = self._dataplane.model_config(request.name, request.version)
            return converter.model_config_to_proto(info)

        return await self._answer("ModelConfig", request.name, request.version, context, work)

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context
    ) -> pb.ModelStatisticsResponse:
        async def work() -> pb.ModelStatisticsResponse:
            stats = self._dataplane.model_statistics(request.name, request.version)
            return converter.model_statistics_to_proto(stats)

        return await self._answer("ModelStatistics", request.name, request.version, context, work)

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context
    ) -> pb.RepositoryIndexResponse:
        async def work() -> pb.RepositoryIndexResponse:
            entries = self._dataplane.repository_index()
            return converter.repository_index_to_proto(entries, ready_only=request.ready)

        return await self._answer("RepositoryIndex", "", "", context, work)

    # Inference ----------------------------------------------------------------------

    async def ModelInfer(self, request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        async def work() -> pb.ModelInferResponse:
            self._check_accepting()
            response = await self._dataplane.infer(converter.request_from_proto(request))
            return converter.response_to_proto(response)

        return await self._answer(
            "ModelInfer", request.model_name, request.model_version, context, work
        )

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        # One request at a time, in arrival order: steps of a sequence depend on the
        # state the previous step left. Other streams run concurrently.
        async for request in request_iterator:
            async for reply in self._stream_replies(request):
                yield reply

    async def _stream_replies(
        self, request: pb.ModelInferRequest
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        start = time.perf_counter()
        code = "OK"
        version = request.model_version
        try:
            self._check_accepting()
            async for response in self._dataplane.stream_infer(
                converter.request_from_proto(request)
            ):
                version = response.model_version
                yield pb.ModelStreamInferResponse(
                    infer_response=converter.response_to_proto(response)
                )
        except ServiceError as error:
            # Reported in the stream, which stays open for the next request.
            code = error.code
            yield pb.ModelStreamInferResponse(error_message=error.message)
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception:
            code = "INTERNAL"
            log.exception("ModelStreamInfer failed for model %r", request.model_name)
            yield pb.ModelStreamInferResponse(error_message=INTERNAL_MESSAGE)
        finally:
            _record(
                "ModelStreamInfer", request.model_name, version, code, time.perf_counter() - start
            )


def _record(rpc: str, model: str, version: str, code: str, seconds: float) -> None:
    # Names of models that do not exist come from clients: keep them out of the labels
    # so that a client cannot grow the metric series without bound.
    if code == "NOT_FOUND":
        model, version = "", ""
    metrics.REQUESTS.labels(model, version, rpc, code).inc()
    if model:
        metrics.REQUEST_DURATION.labels(model, version).observe(seconds)
