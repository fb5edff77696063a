"""The gRPC front end: GRPCInferenceService, the gRPC health service and reflection (unless
turned off) on one grpc.aio server, started and stopped by the server process
(service/server.py). The port speaks TLS when the settings name a certificate (mutual TLS
with a client CA), and the inference service's calls are authenticated by one guard when
tokens or client certificates identify clients (service/grpc/auth.py); health and
reflection stay open."""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from rnnserve.protocol import messages, rpc
from rnnserve.service.auth import Authenticator
from rnnserve.service.dataplane import DataPlane
from rnnserve.service.grpc.auth import Guard
from rnnserve.service.grpc.servicer import InferenceServicer
from rnnserve.service.settings import Settings
from rnnserve.service.tls import TlsFiles

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class GrpcFrontend:
    def __init__(
        self,
        settings: Settings,
        dataplane: DataPlane,
        shared_port: bool,
        tls: TlsFiles | None = None,
        authenticator: Authenticator | None = None,
    ) -> None:
        self._settings = settings
        self._dataplane = dataplane
        self._tls = tls
        options: list[tuple[str, int]] = [
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
        ]
        if shared_port:  # workers bind one port; the kernel spreads connections over them
            options.append(("grpc.so_reuseport", 1))
        self._server = grpc.aio.server(options=options)
        guard = Guard(authenticator) if authenticator and authenticator.enabled else None
        rpc.add_servicer(InferenceServicer(dataplane), self._server, guard)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        if settings.reflection:
            reflection.enable_server_reflection(
                [rpc.SERVICE_NAME, HEALTH_SERVICE, reflection.SERVICE_NAME],
                self._server,
                _reflection_pool(),
            )

    @property
    def name(self) -> str:
        return "gRPC over TLS" if self._tls is not None else "gRPC"

    async def start(self) -> str:
        """Listens (the health service says NOT_SERVING until `set_serving`); returns the
        address."""
        await self.set_serving(False)
        address = f"{self._settings.host}:{self._settings.grpc_port}"
        if self._tls is None:
            self._server.add_insecure_port(address)
        else:
            credentials = grpc.ssl_server_credentials(
                [(self._tls.private_key, self._tls.certificate_chain)],
                root_certificates=self._tls.client_ca,
                require_client_auth=self._tls.client_ca is not None,
            )
            self._server.add_secure_port(address, credentials)
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
