"""GRPCInferenceService: each RPC converts, calls the DataPlane and converts back.

Failures become their gRPC status with the message verbatim (`client_error` turns anything
unexpected into INTERNAL, logged once) and the error's details as trailing metadata
(`sequence-offset`); on a stream, where the stream stays open and no trailer can be sent,
they ride as parameters of the error's `infer_response`. Request metrics are recorded here,
where the RPC and its status code are known. Requests carry the principal the front end
authenticated (service/grpc/auth.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from rnnserve.protocol import messages as pb
from rnnserve.service import metrics
from rnnserve.service.dataplane import DataPlane
from rnnserve.service.errors import ServiceError, client_error
from rnnserve.service.grpc import converter, triton
from rnnserve.service.grpc.auth import current_principal

T = TypeVar("T")


class InferenceServicer:
    def __init__(self, dataplane: DataPlane) -> None:
        self._dataplane = dataplane

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
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception as failure:
            error = client_error(failure, f"{rpc} for model {model!r}")
            code = error.code
            await context.abort(grpc.StatusCode[code], error.message, _trailers(error))
        finally:
            _record(rpc, model, version, code, time.perf_counter() - start)
        raise AssertionError("unreachable: context.abort raises")

    # Health and metadata ------------------------------------------------------------
    # ServerLive and ServerReady are probes, called every few seconds by orchestrators:
    # they stay out of the request metrics.

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=self._dataplane.live())

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self._dataplane.ready())

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            return converter.server_metadata_to_proto(self._dataplane.server_metadata())

        return await self._answer("ServerMetadata", "", "", context, work)

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            return pb.ModelReadyResponse(
                ready=self._dataplane.model_ready(request.name, request.version)
            )

        return await self._answer("ModelReady", request.name, request.version, context, work)

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            metadata = self._dataplane.model_metadata(request.name, request.version)
            return converter.model_metadata_to_proto(metadata)

        return await self._answer("ModelMetadata", request.name, request.version, context, work)

    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            model = self._dataplane.model(request.name, request.version)
            return triton.model_config(model, self._dataplane.settings)

        return await self._answer("ModelConfig", request.name, request.version, context, work)

    async def ModelStatistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            stats = self._dataplane.model_statistics(request.name, request.version)
            return converter.model_statistics_to_proto(stats)

        return await self._answer("ModelStatistics", request.name, request.version, context, work)

    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            entries = self._dataplane.repository_index()
            return converter.repository_index_to_proto(entries, ready_only=request.ready)

        return await self._answer("RepositoryIndex", "", "", context, work)

    # Inference ----------------------------------------------------------------------

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            message = converter.request_from_proto(request, current_principal())
            response = await self._dataplane.infer(message)
            return converter.response_to_proto(response)

        return await self._answer(
            "ModelInfer", request.model_name, request.model_version, context, work
        )

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        # One request at a time, in arrival order: steps of a sequence depend on the
        # state the previous step left. Other streams run concurrently.
        async for request in request_iterator:
            async for reply in self._stream_replies(request):
                yield reply

    async def _stream_replies(self, request: Any) -> AsyncIterator[Any]:
        start = time.perf_counter()
        code = "OK"
        version = request.model_version
        try:
            message = converter.request_from_proto(request, current_principal())
            responses = self._dataplane.stream_infer(message)
            async for response in responses:
                version = response.model_version
                message = converter.response_to_proto(response)
                triton.mark_final(message, response.final)
                yield pb.ModelStreamInferResponse(infer_response=message)
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception as failure:
            # Reported in the stream, which stays open for the next request.
            error = client_error(failure, f"ModelStreamInfer for model {request.model_name!r}")
            code = error.code
            yield converter.stream_error_to_proto(request, error)
        finally:
            _record(
                "ModelStreamInfer", request.model_name, version, code, time.perf_counter() - start
            )


def _trailers(error: ServiceError) -> tuple[tuple[str, str], ...]:
    """An error's details as trailing metadata: `sequence_offset` -> `sequence-offset`."""
    return tuple((name.replace("_", "-"), str(value)) for name, value in error.details.items())


def _record(rpc: str, model: str, version: str, code: str, seconds: float) -> None:
    # Names of models that do not exist come from clients: keep them out of the labels
    # so that a client cannot grow the metric series without bound.
    if code == "NOT_FOUND":
        model, version = "", ""
    metrics.REQUESTS.labels(model, version, rpc, code).inc()
    if model:
        metrics.REQUEST_DURATION.labels(model, version).observe(seconds)
