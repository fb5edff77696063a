"""The HTTP/REST front end: the REST API served by uvicorn inside the server's own event
loop, started and stopped by the server process (service/server.py) as the gRPC one is.

The server process owns the signals: uvicorn's own handlers are never installed. The
listening socket is bound here (with SO_REUSEPORT when workers share the port), so that a
port in use fails the start at once, as it does for gRPC. With the settings' TLS files the
port speaks TLS, and with a client CA it requires client certificates (mutual TLS): the
protocol then tells the application the subject CN of each connection's certificate, the
principal, in the request's scope (uvicorn's HTTP protocol with that one addition).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from rnnserve.service.auth import Authenticator
from rnnserve.service.dataplane import DataPlane
from rnnserve.service.rest.app import CERTIFICATE_NAME, RestApi
from rnnserve.service.settings import Settings
from rnnserve.service.tls import TlsFiles

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: SIGTERM drains the whole server, in order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _CertifiedProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol, telling the application the subject CN of the client
    certificate the TLS handshake verified (the connection's, read once)."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._certificate_name = _common_name(transport.get_extra_info("peercert"))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope[CERTIFICATE_NAME] = self._certificate_name  # type: ignore[literal-required]


def _common_name(certificate: dict[str, Any] | None) -> str | None:
    """The first commonName of a certificate's subject, as Python's ssl parses it."""
    for relative_name in (certificate or {}).get("subject", ()):
        for key, value in relative_name:
            if key == "commonName":
                return str(value)
    return None


class RestFrontend:
    def __init__(
        self,
        settings: Settings,
        dataplane: DataPlane,
        shared_port: bool,
        tls: TlsFiles | None,
        authenticator: Authenticator,
    ) -> None:
        self._settings = settings
        self._shared_port = shared_port
        self._serving = False
        self.name = "HTTP/REST over TLS" if tls is not None else "HTTP/REST"
        api = RestApi(dataplane, lambda: self._serving, authenticator)
        mutual = tls is not None and tls.client_ca is not None
        config = uvicorn.Config(
            api.app,
            # The files load_tls checked; under mutual TLS every client shows a certificate.
            ssl_certfile=settings.tls_cert if tls else None,
            ssl_keyfile=settings.tls_key if tls else None,
            ssl_ca_certs=str(settings.tls_client_ca) if mutual else None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if mutual else ssl.CERT_NONE,
            http=_CertifiedProtocol if mutual else "auto",
            log_config=None,  # the server's logging set-up stays (service/logs.py)
            log_level="warning",
            access_log=False,  # the Recorder writes the access log
            lifespan="off",
            server_header=False,
            # uvicorn waits with asyncio.wait_for, which takes any number of seconds;
            # its annotation says int.
            timeout_graceful_shutdown=settings.grace_period_s,  # type: ignore[arg-type]
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
