"""The gRPC front end: GRPCInferenceService, the gRPC health service and reflection (unless
turned off) on grpc.aio servers sharing one port (`grpc_listeners`), started and stopped
by the server process (service/server.py). The port speaks TLS when the settings name a
certificate (mutual TLS with a client CA); the inference service admits each call with the
Authenticator (answering.py, service/auth.py), while health and reflection stay open.
ModelInfer receives its message within the memory budget (receiving.py); ModelStreamInfer
reads and answers a stream's requests one at a time (stream_requests.py).

The health service answers for the server ("" and the inference service: SERVING while
the data plane is ready) and for each model by name (SERVING while a version of it is
loaded), following every change of the model control."""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from rnnserve.protocol import messages, rpc
from rnnserve.protocol.errors import UsageError
from rnnserve.service.auth import Authenticator
from rnnserve.service.dataplane import DataPlane
from rnnserve.service.grpc.receiving import ReceivedModelInfer
from rnnserve.service.grpc.servicer import InferenceServicer
from rnnserve.service.grpc.stream_requests import StreamRequests
from rnnserve.service.settings import Settings
from rnnserve.service.tls import TlsFiles

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class GrpcFrontend:
    def __init__(
        self,
        settings: Settings,
        dataplane: DataPlane,
        shared_port: bool,
        tls: TlsFiles | None,
        authenticator: Authenticator,
    ) -> None:
        self._settings = settings
        self._dataplane = dataplane
        self._tls = tls
        options: list[tuple[str, int]] = [
            ("grpc.max_receive_message_length", settings.max_received_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            # A call waiting for its turn to receive its message (receiving.py) holds its
            # stream's window of bytes: the BDP probe would grow every window to megabytes,
            # while a message being received opens its own to its size.
            ("grpc.http2.bdp_probe", 0),
        ]
        # grpc.aio's server asks its core for the next call only once the last one has
        # reached its handler: one server takes in one call per turn of the event loop,
        # however many clients wait. Listeners are servers of this process sharing the port
        # (SO_REUSEPORT, the kernel spreads connections over them); each takes in its own
        # calls, so a turn takes in several, and their steps coalesce (docs/performance.md).
        # Workers share the port too. gRPC sets SO_REUSEPORT by default: one lone listener
        # turns it off, so that a second server on its port fails to start rather than
        # silently take half the connections (`rnnserve serve` checks that the port is free
        # before it binds it shared: cli.py).
        reuse_port = shared_port or settings.grpc_listeners > 1
        options.append(("grpc.so_reuseport", int(reuse_port)))
        self._servers = [grpc.aio.server(options=options) for _ in range(settings.grpc_listeners)]
        self._serving = False
        servicer = InferenceServicer(dataplane, authenticator)
        own = {
            "ModelInfer": ReceivedModelInfer(servicer.answering, dataplane).handler(),
            "ModelStreamInfer": StreamRequests(servicer.answering, dataplane).handler(),
        }
        self._health = health.aio.HealthServicer()
        pool = _reflection_pool() if settings.reflection else None
        for server in self._servers:
            rpc.add_servicer(servicer, server, own)
            health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
            if pool is not None:
                reflection.enable_server_reflection(
                    [rpc.SERVICE_NAME, HEALTH_SERVICE, reflection.SERVICE_NAME], server, pool
                )

    @property
    def name(self) -> str:
        return "gRPC over TLS" if self._tls is not None else "gRPC"

    async def start(self) -> str:
        """Listens (the health service says NOT_SERVING until `set_serving`); returns the
        address. UsageError when the port cannot be bound."""
        await self.set_serving(False)
        host, port = self._settings.host, self._settings.grpc_port
        address = f"{host}:{port}"
        credentials = None if self._tls is None else self._credentials(self._tls)
        try:
            for server in self._servers:  # port 0: the others bind the port the first got
                port = _bind(server, f"{host}:{port}", credentials)
        except RuntimeError:  # gRPC says only "Failed to bind"
            raise UsageError(
                f"--grpc-port {self._settings.grpc_port}: cannot listen on {address} "
                "(in use by another process, or not an address of this machine)"
            ) from None
        for server in self._servers:
            await server.start()
        return address

    @staticmethod
    def _credentials(tls: TlsFiles) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(tls.private_key, tls.certificate_chain)],
            root_certificates=tls.client_ca,
            require_client_auth=tls.client_ca is not None,
        )

    async def set_serving(self, serving: bool) -> None:
        """Whether the front end serves: until it does, health says NOT_SERVING for all."""
        self._serving = serving
        await self.refresh()

    async def refresh(self) -> None:
        """The health service's answers, as the data plane sees things now."""
        for name in ["", rpc.SERVICE_NAME]:
            await self._health.set(name, self._status(self._dataplane.ready()))
        for name in self._dataplane.model_names():
            await self._health.set(name, self._status(self._dataplane.model_ready(name)))

    def _status(self, ok: bool) -> int:
        if self._serving and ok:
            return health_pb2.HealthCheckResponse.SERVING
        return health_pb2.HealthCheckResponse.NOT_SERVING

    async def stop(self, grace_period_s: float) -> None:
        """Health NOT_SERVING, then RPCs in flight get the grace period to finish."""
        await self._health.enter_graceful_shutdown()
        await asyncio.gather(*(server.stop(grace_period_s) for server in self._servers))


def _bind(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    """The port `server` listens on: in plaintext, or TLS with `credentials`."""
    if credentials is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, credentials)


def _reflection_pool() -> descriptor_pool.DescriptorPool:
    """The protocol's descriptors, which live in a pool of their own (never protobuf's
    default one), beside those of the health and reflection services."""
    pool = descriptor_pool.DescriptorPool()
    for file in (health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR):
        pool.Add(descriptor_pb2.FileDescriptorProto.FromString(file.serialized_pb))
    for proto in messages.FILES:
        pool.Add(proto)
    return pool
