"""GRPCInferenceService's health, metadata and model control RPCs: each converts, calls the
DataPlane and converts back, answered through `Answering` (answering.py: admitted, recorded,
its failure a status). The inference RPCs have handlers of their own, compiled, as a step's
path is: ModelInfer receiving.py's, ModelStreamInfer stream_requests.py's.
"""

from __future__ import annotations

from typing import Any

from rnnserve.protocol import messages as pb
from rnnserve.service import triton
from rnnserve.service.access import Call, Recorder
from rnnserve.service.auth import Authenticator
from rnnserve.service.dataplane import DataPlane
from rnnserve.service.grpc import converter
from rnnserve.service.grpc.answering import Answering, Context


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
