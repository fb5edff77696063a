"""The server process: settings, signals, the metrics endpoint, the data plane with its
state store, and the front ends (gRPC, and HTTP/REST unless its port is 0), started and
drained in order.

Alone, it listens before the models are loaded, so that orchestrators see it live at once;
inference answers UNAVAILABLE and health NOT_SERVING until loading finishes. As one of
several workers sharing the port (service/workers.py), it loads first and listens only when
the supervisor opens its start gate, once every worker has loaded: a new connection never
lands on a worker still loading.
On SIGTERM or SIGINT the data plane stops admitting requests (idle streams end at once),
the front ends let those in flight finish within the grace period, and the data plane
closes (its state store last), its wait for requests in flight given what the front ends
left of the grace period: one period bounds the whole shutdown. `serve_process` then ends
the process at once.
The TLS files and the token file are read first: the front ends serve TLS and admit
callers with them (service/tls.py, service/auth.py); the token file is read again on
SIGHUP and whenever it changes.

Once loaded, one line tells the server's version (its installed distribution's, which every
part of rnnserve shares), what loaded and what failed, and whether the server is ready
(no model loaded, or a failure under --strict-readiness, is not ready); with
--exit-on-error a failure stops the server instead. Front ends follow every later change
of what is loaded (`refresh`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from typing import NoReturn, Protocol

from prometheus_client import REGISTRY

from rnnserve.protocol.errors import UsageError
from rnnserve.service import affinity, metrics
from rnnserve.service.auth import Authenticator
from rnnserve.service.dataplane import DataPlane
from rnnserve.service.event_loop import loop_factory, loop_name
from rnnserve.service.grpc.frontend import GrpcFrontend
from rnnserve.service.memory import return_large_buffers
from rnnserve.service.nvml import register_gpu_metrics
from rnnserve.service.rest.frontend import RestFrontend
from rnnserve.service.sessions import open_store
from rnnserve.service.settings import Settings
from rnnserve.service.tls import load_tls

log = logging.getLogger(__name__)

# A worker's start gate: awaited after loading, returns when the worker may listen.
StartGate = Callable[[], Awaitable[None]]


class Frontend(Protocol):
    """A protocol front end over the data plane."""

    @property
    def name(self) -> str:
        """What the log calls it."""
        ...

    async def start(self) -> str:
        """Listens; returns the address."""
        ...

    async def set_serving(self, serving: bool) -> None:
        """Whether it serves: until then its health checks report NOT_SERVING."""
        ...

    async def refresh(self) -> None:
        """Its health checks follow what the data plane says is ready now."""
        ...

    async def stop(self, grace_period_s: float) -> None:
        """Stops listening, after its requests in flight finished (or the grace period)."""
        ...


async def serve(
    settings: Settings,
    start_gate: StartGate | None = None,
    worker: str | None = None,
    index: int = 0,
) -> None:
    """Run until SIGTERM/SIGINT. Raises if the repository cannot be loaded.

    Without a start gate the server stands alone and also serves /metrics; with one it is
    a worker (`worker`: its id in the owned store, named by the supervisor; `index`: its
    place among the workers, which picks its CPU under `cpu_affinity`), and the supervisor
    serves every worker's metrics.
    """
    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    # Before any thread of ours starts: those started later inherit the core.
    cpu = affinity.pin(settings.cpu_affinity, index)
    if cpu is not None:
        loop.set_default_executor(
            ThreadPoolExecutor(initializer=affinity.releaser(settings.cpu_affinity))
        )
    return_large_buffers()  # resident memory comes back after a large request
    metrics.START_TIME.set(time.time())
    tls, authenticator = load_tls(settings), Authenticator.from_settings(settings)
    store = open_store(settings, worker)
    dataplane = DataPlane(settings, store)
    shared_port = start_gate is not None
    frontends: list[Frontend] = [GrpcFrontend(settings, dataplane, shared_port, tls, authenticator)]
    if settings.http_port:
        frontends.append(RestFrontend(settings, dataplane, shared_port, tls, authenticator))
    for frontend in frontends:
        dataplane.watch(frontend.refresh)
    if start_gate is None:  # before anything is logged: a port in use is one line
        address = settings.metrics_address
        if settings.metrics_port:
            REGISTRY.register(metrics.SessionsActive(store.active))
            register_gpu_metrics(REGISTRY)
            metrics.serve(settings.metrics_port, address)
        await _listen(frontends, f"metrics on {address}:{settings.metrics_port}")
    if settings.auth_tokens and tls is None:
        log.warning("bearer tokens over plaintext: anyone on the path can read them; serve TLS")
    stop = asyncio.Event()
    pinned = "" if cpu is None else f", its threads on CPU {cpu}"
    polls = (
        f", polling {settings.busy_poll_us} µs after a lone client's requests"
        if settings.busy_poll_us
        else ""
    )
    log.info("event loop: %s%s%s", loop_name(loop), pinned, polls)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    tokens = authenticator.tokens
    watching = None
    if tokens is not None:
        loop.add_signal_handler(signal.SIGHUP, tokens.reload)
        watching = asyncio.create_task(tokens.watch())

    try:
        if start_gate is None:
            await _unless_stopped(dataplane.load(), stop)
        else:
            await _unless_stopped(dataplane.load(), stop)
            await _unless_stopped(start_gate(), stop)
            if not stop.is_set():
                await _listen(frontends, "worker")
        if not stop.is_set():
            _report_loading(dataplane, time.perf_counter() - started)
            for frontend in frontends:
                await frontend.set_serving(True)
            await stop.wait()
    finally:
        if watching is not None:
            watching.cancel()
        log.info("draining: finishing requests in flight (up to %s s)", settings.grace_period_s)
        deadline = time.monotonic() + settings.grace_period_s
        dataplane.drain()
        await asyncio.gather(*(frontend.stop(settings.grace_period_s) for frontend in frontends))
        await dataplane.close(max(0.0, deadline - time.monotonic()))
        log.info("stopped")


def serve_process(
    settings: Settings,
    start_gate: StartGate | None = None,
    worker: str | None = None,
    index: int = 0,
) -> NoReturn:
    """`serve` as the life of this process, which ends as soon as the server has stopped
    (its logs flushed): the interpreter's teardown would go on to free, one by one, the
    objects of every stream the shutdown closed, which with thousands of them took seconds
    past the grace period and frees nothing the system does not. A failure goes through
    the event loop's usual clean-up and is raised."""
    with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
        runner.run(serve(settings, start_gate, worker, index))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _report_loading(dataplane: DataPlane, seconds: float) -> None:
    """The start-up line: models loaded and failed, counted apart, and readiness; with
    --exit-on-error, a failure stops the server."""
    repository = dataplane.repository
    loaded = sorted({model.name for model in repository.loaded()})
    failures = repository.failures()
    failed = sorted({name for name, _, _ in failures})
    counts = f"{_models(len(loaded))} loaded, {len(failed)} failed"
    if failed:
        counts += (
            " (" + ", ".join(f"{name} version {version}" for name, version, _ in failures) + ")"
        )
    if dataplane.settings.exit_on_error and failures:
        name, version, reason = failures[0]
        raise UsageError(f"--exit-on-error: {counts}; {name} version {version}: {reason}")
    reachability = dataplane.store_reachability
    server = f"rnnserve {metadata.version('rnnserve-server')}"
    if loaded:
        counts += f" on {_placement(dataplane)}"
    if dataplane.ready():
        log.info("%s ready: %s in %.2f s", server, counts, seconds)
    elif not loaded:
        log.warning("%s not ready: %s: no model to serve", server, counts)
    elif not reachability.up:
        log.warning(
            "%s not ready: %s; the %s state store at %s is unreachable (ready once it answers)",
            server, counts, reachability.store, reachability.where,
        )  # fmt: skip
    else:
        log.warning("%s not ready (--strict-readiness): %s", server, counts)


def _placement(dataplane: DataPlane) -> str:
    """Where the models run (the providers ORT chose) and where session states live."""
    providers = sorted({model.runtime.provider for model in dataplane.repository.loaded()})
    device = dataplane.state_device
    states = "the host" if device is None else f"{device.describe()} (device_state)"
    return f"{', '.join(providers)}, session states on {states}"


def _models(count: int) -> str:
    return f"{count} model" if count == 1 else f"{count} models"


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
