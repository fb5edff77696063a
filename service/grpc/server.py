"""The server process: grpc.aio server with health and reflection, /metrics, SIGTERM.

It listens before the models are loaded, so that orchestrators see it live at once;
inference answers UNAVAILABLE and health NOT_SERVING until loading finishes.
On SIGTERM or SIGINT it stops taking new requests, lets those in flight finish within
the grace period, closes the data plane and returns.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from service.dataplane import DataPlane
from service.grpc.servicer import InferenceServicer
from service.protocol.generated import grpc_service_pb2 as pb
from service.protocol.generated import grpc_service_pb2_grpc as pb_grpc
from service.settings import Settings

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


def _build_server(settings: Settings) -> grpc.aio.Server:
    return grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
        ]
    )


async def _set_health(checker: health.aio.HealthServicer, names: list[str], status: int) -> None:
    for name in ["", SERVICE_NAME, *names]:
        await checker.set(name, status)


async def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT. Raises if the repository cannot be loaded."""
    started = time.perf_counter()
    dataplane = DataPlane(settings)
    servicer = InferenceServicer(dataplane)
    checker = health.aio.HealthServicer()

    server = _build_server(settings)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    health_service = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    reflection.enable_server_reflection(
        [SERVICE_NAME, health_service, reflection.SERVICE_NAME], server
    )
    address = f"{settings.host}:{settings.grpc_port}"
    server.add_insecure_port(address)
    await _set_health(checker, [], health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.host)
    log.info("listening on %s (metrics on port %s)", address, settings.metrics_port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    try:
        await _load_unless_stopped(dataplane, stop)
        if not stop.is_set():
            await _set_health(
                checker, dataplane.model_names(), health_pb2.HealthCheckResponse.SERVING
            )
            log.info(
                "ready: %d models in %.2f s",
                len(dataplane.model_names()),
                time.perf_counter() - started,
            )
            await stop.wait()
    finally:
        log.info("draining: finishing requests in flight (up to %s s)", settings.grace_period_s)
        servicer.drain()
        await checker.enter_graceful_shutdown()
        await server.stop(settings.grace_period_s)
        await dataplane.close()
        log.info("stopped")


async def _load_unless_stopped(dataplane: DataPlane, stop: asyncio.Event) -> None:
    """Load the repository, giving up early if a stop signal arrives meanwhile."""
    loading = asyncio.create_task(dataplane.load())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if loading.done():
        loading.result()  # re-raises a failed load
    else:
        loading.cancel()
