"""The HTTP/REST front end: the REST API served by uvicorn inside the server's own event
loop, started and stopped by the server process (service/server.py) as the gRPC one is.

The server process owns the signals: uvicorn's own handlers are never installed. The
listening socket is bound here (with SO_REUSEPORT when workers share the port), so that a
port in use fails the start at once, as it does for gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import uvicorn

from rnnserve.service.dataplane import DataPlane
from rnnserve.service.rest.app import RestApi
from rnnserve.service.settings import Settings

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: SIGTERM drains the whole server, in order."""

    def capture_signals(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


class RestFrontend:
    name = "HTTP/REST"

    def __init__(self, settings: Settings, dataplane: DataPlane, shared_port: bool) -> None:
        self._settings = settings
        self._shared_port = shared_port
        self._serving = False
        api = RestApi(dataplane, lambda: self._serving)
        config = uvicorn.Config(
            api.app,
            log_config=None,  # the server's logging set-up stays (service/logs.py)
            log_level="warning",
            access_log=False,  # the Recorder writes the access log
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=settings.grace_period_s,
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> str:
        """Listens (readiness says 400 until `set_serving`); returns the address."""
        host, port = self._settings.host, self._settings.http_port
        sock = _bind(host, port, self._shared_port)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        self._task.add_done_callback(_log_failure)
        return f"{host}:{port}"

    async def set_serving(self, serving: bool) -> None:
        self._serving = serving

    async def refresh(self) -> None:
        """Nothing to push: REST answers readiness from the data plane on each request."""

    async def stop(self, grace_period_s: float) -> None:
        """Not ready, then requests in flight get the grace period (the Config's) to
        finish before the connections close."""
        self._serving = False
        if self._task is None:
            return
        self._server.should_exit = True
        await self._task


def _bind(host: str, port: int, reuse_port: bool) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:  # workers bind one port; the kernel spreads connections over them
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the HTTP/REST server failed", exc_info=task.exception())
