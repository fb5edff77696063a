"""The server process: grpc.aio server with health and reflection, /metrics, SIGTERM.

Alone, it listens before the models are loaded, so that orchestrators see it live at once;
inference answers UNAVAILABLE and health NOT_SERVING until loading finishes. As one of
several workers sharing the port (service/workers.py), it loads first and listens only when
the supervisor opens its start gate, once every worker has loaded: a new connection never
lands on a worker still loading.
On SIGTERM or SIGINT it stops taking new requests, lets those in flight finish within
the grace period, closes the data plane and returns.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable

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

# A worker's start gate: awaited after loading, returns when the worker may listen.
StartGate = Callable[[], Awaitable[None]]


def _build_server(settings: Settings, shared_port: bool) -> grpc.aio.Server:
    options: list[tuple[str, int]] = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
    ]
    if shared_port:  # workers bind one port; the kernel spreads connections over them
        options.append(("grpc.so_reuseport", 1))
    return grpc.aio.server(options=options)


async def _set_health(checker: health.aio.HealthServicer, names: list[str], status: int) -> None:
    for name in ["", SERVICE_NAME, *names]:
        await checker.set(name, status)


async def serve(settings: Settings, start_gate: StartGate | None = None) -> None:
    """Run until SIGTERM/SIGINT. Raises if the repository cannot be loaded.

    Without a start gate the server stands alone and also serves /metrics; with one it is
    a worker, and the supervisor serves every worker's metrics.
    """
    started = time.perf_counter()
    dataplane = DataPlane(settings)
    servicer = InferenceServicer(dataplane)
    checker = health.aio.HealthServicer()

    server = _build_server(settings, shared_port=start_gate is not None)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    health_service = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    reflection.enable_server_reflection(
        [SERVICE_NAME, health_service, reflection.SERVICE_NAME], server
    )
    await _set_health(checker, [], health_pb2.HealthCheckResponse.NOT_SERVING)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    try:
        if start_gate is None:
            await _listen(server, settings, metrics=True)
            await _unless_stopped(dataplane.load(), stop)
        else:
            await _unless_stopped(dataplane.load(), stop)
            if not stop.is_set():
                await _unless_stopped(start_gate(), stop)
            if not stop.is_set():
                await _listen(server, settings, metrics=False)
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


async def _listen(server: grpc.aio.Server, settings: Settings, metrics: bool) -> None:
    address = f"{settings.host}:{settings.grpc_port}"
    server.add_insecure_port(address)
    await server.start()
    if not metrics:
        log.info("listening on %s", address)
        return
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.host)
    log.info("listening on %s (metrics on port %s)", address, settings.metrics_port)


async def _unless_stopped(work: Awaitable[None], stop: asyncio.Event) -> None:
    """Finish `work` (loading, the start gate), giving up early if a stop signal arrives."""
    working = asyncio.ensure_future(work)
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({working, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if working.done():
        working.result()  # re-raises a failure
    else:
        working.cancel()
