"""The gRPC front end: GRPCInferenceService, the gRPC health service and reflection on one
grpc.aio server, started and stopped by the server process (service/server.py)."""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from rnnserve.protocol import messages, rpc
from rnnserve.service.dataplane import DataPlane
from rnnserve.service.grpc.servicer import InferenceServicer
from rnnserve.service.settings import Settings

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class GrpcFrontend:
    name = "gRPC"

    def __init__(self, settings: Settings, dataplane: DataPlane, shared_port: bool) -> None:
        self._settings = settings
        self._dataplane = dataplane
        options: list[tuple[str, int]] = [
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
        ]
        if shared_port:  # workers bind one port; the kernel spreads connections over them
            options.append(("grpc.so_reuseport", 1))
        self._server = grpc.aio.server(options=options)
        rpc.add_servicer(InferenceServicer(dataplane), self._server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            [rpc.SERVICE_NAME, HEALTH_SERVICE, reflection.SERVICE_NAME],
            self._server,
            _reflection_pool(),
        )

    async def start(self) -> str:
        """Listens (the health service says NOT_SERVING until `set_serving`); returns the
        address."""
        await self.set_serving(False)
        address = f"{self._settings.host}:{self._settings.grpc_port}"
        self._server.add_insecure_port(address)
        await self._server.start()
        return address

    async def set_serving(self, serving: bool) -> None:
        """The health service's answer for the server, the inference service and each
        model."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", rpc.SERVICE_NAME, *self._dataplane.model_names()]:
            await self._health.set(name, status)

    async def stop(self, grace_period_s: float) -> None:
        """Health NOT_SERVING, then RPCs in flight get the grace period to finish."""
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace_period_s)


def _reflection_pool() -> descriptor_pool.DescriptorPool:
    """The protocol's descriptors, which live in a pool of their own (never protobuf's
    default one), beside those of the health and reflection services."""
    pool = descriptor_pool.DescriptorPool()
    for file in (health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR):
        pool.Add(descriptor_pb2.FileDescriptorProto.FromString(file.serialized_pb))
    for proto in messages.FILES:
        pool.Add(proto)
    return pool
