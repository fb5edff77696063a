"""Several server processes on one port: `rnnserve serve --workers N`.

The supervisor (the process that ran `rnnserve serve`) starts N workers with the spawn start
method (gRPC does not survive a fork). Each loads the repository itself, with its own ONNX
Runtime sessions, and binds the same gRPC port with SO_REUSEPORT: the kernel spreads new
connections over the workers, and a connection stays with the worker that accepted it.
Workers listen only once every one of them has loaded (the start gate below), so a client
never lands on a worker that is still loading and ServerReady from any worker means all are.

State: a client that reconnects may land on another worker, so sequence state must be
reachable from every worker: several workers require the owned state store (each session's
state stays in the worker that stepped it last and is handed over through Redis when a
request lands elsewhere) or the redis store (every step in Redis).

Metrics: prometheus_client's multiprocess mode. The supervisor points PROMETHEUS_MULTIPROC_DIR
at a fresh folder before any worker starts, serves /metrics adding up what the workers wrote
there (service/metrics.py says how each gauge combines), and removes the folder on exit.
Model statistics (the ModelStatistics RPC) stay per worker: they describe the worker that
answers.

Stopping: SIGTERM or SIGINT to the supervisor is forwarded to every worker as SIGTERM; each
drains as a lone server does, and the supervisor exits 0 once all have (workers still running
after the grace period and a margin are killed). A worker that dies on its own is logged, the
others are stopped and the supervisor exits 1: the orchestrator restarts the server whole,
rather than one worker reloading its models while the others serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnProcess
from types import FrameType

from rnnserve.service.settings import Settings

log = logging.getLogger(__name__)

MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
LOADED, OPEN = "loaded", "open"  # the start gate's two messages
KILL_MARGIN_S = 10.0  # after the grace period, time a worker gets to close before SIGKILL
POLL_S = 1.0  # how often the supervisor looks at the kill deadline while workers stop


def serve_workers(settings: Settings, log_level: str) -> int:
    """Run settings.workers workers until SIGTERM/SIGINT; the exit status for the CLI."""
    metrics_dir = tempfile.mkdtemp(prefix="rnnserve-metrics-")
    # Set before any worker starts: prometheus_client picks its storage at import time.
    os.environ[MULTIPROCESS_DIR_ENV] = metrics_dir
    try:
        if settings.metrics_port:
            _serve_metrics(settings, metrics_dir)
        return Supervisor(settings, log_level).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _serve_metrics(settings: Settings, metrics_dir: str) -> None:
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    from rnnserve.service import metrics

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=metrics_dir)
    metrics.serve(settings.metrics_port, settings.metrics_address, registry)


@dataclass
class Worker:
    index: int
    process: SpawnProcess
    gate: Connection  # the supervisor's end of the start gate

    @property
    def name(self) -> str:
        return f"worker {self.index} (pid {self.process.pid})"


class Supervisor:
    def __init__(self, settings: Settings, log_level: str) -> None:
        self.settings = settings
        self.log_level = log_level
        self.workers: list[Worker] = []
        self.stop_deadline: float | None = None  # set once the workers are told to stop
        self.failed = False  # a worker died on its own or stopped badly: exit 1

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        context = multiprocessing.get_context("spawn")
        self.workers = [self._start(context, index) for index in range(self.settings.workers)]
        log.info(
            "started %d workers on %s:%s (metrics on %s:%s)",
            len(self.workers), self.settings.host, self.settings.grpc_port,
            self.settings.metrics_address, self.settings.metrics_port,
        )  # fmt: skip
        return self._watch()

    def _start(self, context: multiprocessing.context.SpawnContext, index: int) -> Worker:
        ours, theirs = context.Pipe()
        process = context.Process(
            target=run_worker,
            args=(self.settings, theirs, self.log_level),
            name=f"rnnserve-worker-{index}",
        )
        process.start()
        theirs.close()  # the worker holds it now; its death closes the pipe for us to see
        return Worker(index, process, ours)

    def _watch(self) -> int:
        """Open the gate when all have loaded; wait until every worker has exited."""
        loading: dict[object, Worker] = {worker.gate: worker for worker in self.workers}
        running: dict[object, Worker] = {w.process.sentinel: w for w in self.workers}
        loaded = 0
        while running:
            for ready in wait([*loading, *running], timeout=self._wait_timeout()):
                if ready in loading:
                    loaded += self._loaded(loading.pop(ready))
                    if loaded == len(self.workers) and not self.stopping:
                        self._open_gates()
                    continue
                worker = running.pop(ready)
                loading.pop(worker.gate, None)
                self._exited(worker)
            self._kill_if_overdue(running.values())
        return 1 if self.failed else 0

    @property
    def stopping(self) -> bool:
        return self.stop_deadline is not None

    def _wait_timeout(self) -> float | None:
        return POLL_S if self.stopping else None

    @staticmethod
    def _loaded(worker: Worker) -> bool:
        """Whether the worker says it has loaded; if it died loading, its sentinel tells."""
        try:
            return worker.gate.recv() == LOADED
        except EOFError:
            return False

    def _open_gates(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(BrokenPipeError):  # it just died: its sentinel tells
                worker.gate.send(OPEN)
        log.info("all %d workers loaded: serving", len(self.workers))

    def _exited(self, worker: Worker) -> None:
        from prometheus_client import multiprocess

        worker.process.join()
        multiprocess.mark_process_dead(worker.process.pid)  # drops its live gauges
        code = worker.process.exitcode
        if not self.stopping:
            log.error("%s exited unexpectedly with %s: stopping the others", worker.name, code)
            self.failed = True
            self._stop_workers()
        elif code not in (0, -signal.SIGTERM):  # SIGTERM kills a worker still importing
            log.error("%s exited with %s while stopping", worker.name, code)
            self.failed = True

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("%s: stopping the workers", signal.Signals(signum).name)
        self._stop_workers()

    def _stop_workers(self) -> None:
        if self.stop_deadline is None:
            self.stop_deadline = time.monotonic() + self.settings.grace_period_s + KILL_MARGIN_S
        for worker in self.workers:
            if worker.process.exitcode is None:
                os.kill(worker.process.pid, signal.SIGTERM)

    def _kill_if_overdue(self, running: Iterable[Worker]) -> None:
        if self.stop_deadline is None or time.monotonic() < self.stop_deadline:
            return
        for worker in running:
            log.error("%s still running after the grace period: killing it", worker.name)
            worker.process.kill()


# The worker process.


class _PipeGate:
    """A worker's side of the start gate: says it has loaded, waits to be let open."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    async def __call__(self) -> None:
        self.connection.send(LOADED)
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[None] = loop.create_future()
        fd = self.connection.fileno()
        loop.add_reader(fd, lambda: opened.done() or opened.set_result(None))
        try:
            await opened
        finally:
            loop.remove_reader(fd)
        self.connection.recv()  # OPEN; EOFError if the supervisor is gone: do not serve


def run_worker(settings: Settings, gate: Connection, log_level: str) -> None:
    """A worker's main function (it runs in a fresh interpreter)."""
    # Ctrl-C reaches the whole process group: the supervisor forwards it as SIGTERM, and
    # until the server installs its own handlers the worker must not die of it mid-import.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from rnnserve.service import logs

    logs.configure(log_level, settings.log_format, settings.access_log, worker=True)

    from rnnserve.service.server import serve

    asyncio.run(serve(settings, start_gate=_PipeGate(gate)))
