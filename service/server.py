"""The server process: settings, signals, the metrics endpoint, the data plane with its
state store, and the front ends (today gRPC), started and drained in order.

Alone, it listens before the models are loaded, so that orchestrators see it live at once;
inference answers UNAVAILABLE and health NOT_SERVING until loading finishes. As one of
several workers sharing the port (service/workers.py), it loads first and listens only when
the supervisor opens its start gate, once every worker has loaded: a new connection never
lands on a worker still loading.
On SIGTERM or SIGINT the data plane stops admitting requests, the front ends let those in
flight finish within the grace period, and the data plane closes (its state store last).
The TLS files and the token file are read first: the front ends serve TLS and authenticate
callers with them (service/tls.py, service/auth.py).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from prometheus_client import start_http_server

from rnnserve.service.auth import Authenticator
from rnnserve.service.dataplane import DataPlane
from rnnserve.service.grpc.frontend import GrpcFrontend
from rnnserve.service.sessions import open_store
from rnnserve.service.settings import Settings
from rnnserve.service.tls import load_tls

log = logging.getLogger(__name__)

# A worker's start gate: awaited after loading, returns when the worker may listen.
StartGate = Callable[[], Awaitable[None]]


class Frontend(Protocol):
    """A protocol front end over the data plane."""

    name: str

    async def start(self) -> str:
        """Listens; returns the address."""
        ...

    async def set_serving(self, serving: bool) -> None:
        """What its health checks report."""
        ...

    async def stop(self, grace_period_s: float) -> None:
        """Stops listening, after its requests in flight finished (or the grace period)."""
        ...


async def serve(settings: Settings, start_gate: StartGate | None = None) -> None:
    """Run until SIGTERM/SIGINT. Raises if the repository cannot be loaded.

    Without a start gate the server stands alone and also serves /metrics; with one it is
    a worker, and the supervisor serves every worker's metrics.
    """
    started = time.perf_counter()
    tls, authenticator = load_tls(settings), Authenticator.from_settings(settings)
    if settings.auth_tokens and tls is None:
        log.warning("bearer tokens over plaintext: anyone on the path can read them; serve TLS")
    dataplane = DataPlane(settings, open_store(settings))
    frontends: list[Frontend] = [
        GrpcFrontend(settings, dataplane, start_gate is not None, tls, authenticator)
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    try:
        if start_gate is None:
            if settings.metrics_port:
                start_http_server(settings.metrics_port, addr=metrics_address(settings))
            await _listen(
                frontends, f"metrics on {metrics_address(settings)}:{settings.metrics_port}"
            )
            await _unless_stopped(dataplane.load(), stop)
        else:
            await _unless_stopped(dataplane.load(), stop)
            await _unless_stopped(start_gate(), stop)
            if not stop.is_set():
                await _listen(frontends, "worker")
        if not stop.is_set():
            for frontend in frontends:
                await frontend.set_serving(True)
            log.info(
                "ready: %d models in %.2f s",
                len(dataplane.model_names()),
                time.perf_counter() - started,
            )
            await stop.wait()
    finally:
        log.info("draining: finishing requests in flight (up to %s s)", settings.grace_period_s)
        dataplane.drain()
        await asyncio.gather(*(frontend.stop(settings.grace_period_s) for frontend in frontends))
        await dataplane.close()
        log.info("stopped")


def metrics_address(settings: Settings) -> str:
    """Where /metrics listens: `metrics_host`, else `host`."""
    return settings.metrics_host or settings.host


async def _listen(frontends: list[Frontend], note: str) -> None:
    for frontend in frontends:
        address = await frontend.start()
        log.info("listening on %s (%s, %s)", address, frontend.name, note)


async def _unless_stopped(work: Awaitable[None], stop: asyncio.Event) -> None:
    """Finish `work` (loading, the start gate), giving up early if a stop signal arrives."""
    if stop.is_set():
        return
    working = asyncio.ensure_future(work)
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({working, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if working.done():
        working.result()  # re-raises a failure
    else:
        working.cancel()
