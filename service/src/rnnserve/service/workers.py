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
there (service/metrics.py says how each gauge combines; a dead worker's live gauges go with
it), and removes the folder on exit. It adds two series of its own, read when scraped: the
sessions, counted once in the Redis the workers share, and its worker restarts. Model
statistics (the ModelStatistics RPC) stay per worker: they describe the worker that answers.

A worker that dies on its own (a crash, the OOM killer, SIGKILL) is started again while the
others keep serving: at once, then after a backoff that doubles (1 s, 2 s, ... at most
MAX_BACKOFF_S) while deaths follow each other; the new worker loads and starts listening
without waiting at the start gate, which opened long ago. The sessions the dead worker held
in memory (owned store) are declared lost at once, so that their next steps are answered
ABORTED ("state ... was lost") from the other workers rather than waited for; with the
redis store they continue exactly. After `worker_restart_limit` deaths within
`worker_restart_window_s` the supervisor stops the others and exits 1 with one line: a
worker that cannot live is the orchestrator's to see.

Stopping: SIGTERM or SIGINT to the supervisor is forwarded to every worker as SIGTERM; each
drains as a lone server does, and the supervisor exits 0 once all have (workers still running
after the grace period and a margin are killed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import struct
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnProcess
from types import FrameType
from typing import Any

from rnnserve.service.settings import Settings

log = logging.getLogger(__name__)

MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
LOADED, OPEN = "loaded", "open"  # the start gate's two messages
KILL_MARGIN_S = 10.0  # after the grace period, time a worker gets to close before SIGKILL
POLL_S = 1.0  # how often the supervisor looks at the kill deadline while workers stop
MAX_BACKOFF_S = 10.0  # the longest wait before a dead worker is started again


def serve_workers(settings: Settings, log_level: str) -> int:
    """Run settings.workers workers until SIGTERM/SIGINT; the exit status for the CLI."""
    metrics_dir = tempfile.mkdtemp(prefix="rnnserve-metrics-")
    # Set before any worker starts: prometheus_client picks its storage at import time.
    os.environ[MULTIPROCESS_DIR_ENV] = metrics_dir
    supervisor = Supervisor(settings, log_level)
    try:
        if settings.metrics_port:
            _serve_metrics(settings, metrics_dir, supervisor)
        return supervisor.run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


class WorkerFiles:
    """The workers' metrics, summed from their files (prometheus_client's
    MultiProcessCollector), read again when a file is caught half made: a worker started
    again creates its files as it first records, and a scrape that reads one before its
    header is in fails (struct.error) where a moment later it reads."""

    TRIES = 5

    def __init__(self, path: str) -> None:
        from prometheus_client.multiprocess import MultiProcessCollector

        # Not registered itself (registry None); no annotations in that module.
        self._files = MultiProcessCollector(None, path=path)  # type: ignore[no-untyped-call]

    def collect(self) -> list[Any]:
        for _ in range(self.TRIES - 1):
            with contextlib.suppress(struct.error):
                return self._read()
            time.sleep(0.01)
        return self._read()  # a file still half made: the scrape fails, as before

    def _read(self) -> list[Any]:
        return list(self._files.collect())  # type: ignore[no-untyped-call]


def _serve_metrics(settings: Settings, metrics_dir: str, supervisor: Supervisor) -> None:
    from prometheus_client import CollectorRegistry

    from rnnserve.service import metrics
    from rnnserve.service.nvml import register_gpu_metrics
    from rnnserve.service.sessions.redis.census import RedisCensus

    registry = CollectorRegistry()
    registry.register(WorkerFiles(metrics_dir))
    # Workers share one Redis (several workers need the redis or owned store): counted once.
    census = RedisCensus(settings.redis_url, "rnnserve", settings.state_store_timeout_s)
    registry.register(metrics.SessionsActive(census))
    registry.register(metrics.WorkerRestarts(lambda: supervisor.restarts))
    register_gpu_metrics(registry)
    metrics.serve(settings.metrics_port, settings.metrics_address, registry)


@dataclass
class Worker:
    index: int
    process: SpawnProcess
    gate: Connection  # the supervisor's end of the start gate
    id: str  # its id in the owned store, to declare it dead
    loaded: bool = False

    @property
    def name(self) -> str:
        return f"worker {self.index} (pid {self.process.pid})"


class Supervisor:
    def __init__(self, settings: Settings, log_level: str) -> None:
        self.settings = settings
        self.log_level = log_level
        self.workers: list[Worker] = []
        self.stop_deadline: float | None = None  # set once the workers are told to stop
        self.failed = False  # workers died too often, or stopped badly: exit 1
        self.restarts = 0  # workers started again after dying
        self._opened = False  # the start gate, opened once every first worker loaded
        self._deaths: deque[float] = deque()  # when workers died, within the window
        self._due: list[tuple[float, int]] = []  # (when, index): restarts waiting
        self._context = multiprocessing.get_context("spawn")
        self._loading: dict[Connection, Worker] = {}  # by gate
        self._running: dict[int, Worker] = {}  # by process sentinel

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        signal.signal(signal.SIGHUP, self._forward_hangup)
        for index in range(self.settings.workers):
            self._start(index)
        log.info(
            "started %d workers on %s:%s (metrics on %s:%s)",
            len(self.workers), self.settings.host, self.settings.grpc_port,
            self.settings.metrics_address, self.settings.metrics_port,
        )  # fmt: skip
        return self._watch()

    def _start(self, index: int) -> Worker:
        ours, theirs = self._context.Pipe()
        worker_id = uuid.uuid4().hex
        process = self._context.Process(
            target=run_worker,
            args=(self.settings, theirs, self.log_level, worker_id, index),
            name=f"rnnserve-worker-{index}",
        )
        process.start()
        theirs.close()  # the worker holds it now; its death closes the pipe for us to see
        worker = Worker(index, process, ours, worker_id)
        if index < len(self.workers):
            self.workers[index] = worker
        else:
            self.workers.append(worker)
        self._loading[worker.gate] = worker
        self._running[worker.process.sentinel] = worker
        return worker

    def _watch(self) -> int:
        """Open the gate when all have loaded, start again those that die; wait until
        every worker has exited."""
        while self._running or (self._due and not self.stopping):
            for ready in wait([*self._loading, *self._running], timeout=self._wait_timeout()):
                if ready in self._loading:
                    self._loaded(self._loading.pop(ready))
                    continue
                assert isinstance(ready, int)  # not a gate: a process sentinel
                worker = self._running.pop(ready)
                self._loading.pop(worker.gate, None)
                self._exited(worker)
            self._restart_due()
            self._kill_if_overdue(self._running.values())
        return 1 if self.failed else 0

    @property
    def stopping(self) -> bool:
        return self.stop_deadline is not None

    def _wait_timeout(self) -> float | None:
        if self.stopping:
            return POLL_S
        if self._due:
            return max(0.0, min(when for when, _ in self._due) - time.monotonic())
        return None

    def _loaded(self, worker: Worker) -> None:
        """The worker says it has loaded (if it died loading, its sentinel tells): the gate
        opens once every first worker has; a restarted one goes through at once."""
        try:
            if worker.gate.recv() != LOADED:
                return
        except EOFError:
            return
        worker.loaded = True
        if self.stopping:
            return
        if self._opened:
            self._open(worker)
            log.info("%s loaded: serving again beside the others", worker.name)
        elif all(each.loaded for each in self.workers):
            self._opened = True
            for each in self.workers:
                self._open(each)
            log.info("all %d workers loaded: serving", len(self.workers))

    @staticmethod
    def _open(worker: Worker) -> None:
        with contextlib.suppress(BrokenPipeError):  # it just died: its sentinel tells
            worker.gate.send(OPEN)

    def _exited(self, worker: Worker) -> None:
        from prometheus_client import multiprocess

        worker.process.join()
        # Drops its live gauges (prometheus_client's multiprocess module has no annotations).
        multiprocess.mark_process_dead(worker.process.pid)  # type: ignore[no-untyped-call]
        code = worker.process.exitcode
        if self.stopping:
            if code not in (0, -signal.SIGTERM):  # SIGTERM kills a worker still importing
                log.error("%s exited with %s while stopping", worker.name, code)
                self.failed = True
            return
        how = _death(code)
        lost = self._declare_dead(worker)
        now = time.monotonic()
        self._deaths.append(now)
        while self._deaths[0] < now - self.settings.worker_restart_window_s:
            self._deaths.popleft()
        deaths, window = len(self._deaths), self.settings.worker_restart_window_s
        if deaths >= self.settings.worker_restart_limit:
            log.error(
                "%s %s: %d workers died within %g s (--worker-restart-limit %d): stopping the "
                "server", worker.name, how, deaths, window, self.settings.worker_restart_limit,
            )  # fmt: skip
            self.failed = True
            self._stop_workers()
            return
        backoff = 0.0 if deaths == 1 else min(2.0 ** (deaths - 2), MAX_BACKOFF_S)
        log.error(
            "%s %s%s: the others keep serving; starting it again in %g s (%d deaths within "
            "%g s of %d allowed)", worker.name, how, lost, backoff, deaths, window,
            self.settings.worker_restart_limit,
        )  # fmt: skip
        self._due.append((now + backoff, worker.index))

    def _declare_dead(self, worker: Worker) -> str:
        """With the owned store, the sessions the worker held are lost: said at once (its
        reaping), so that their next steps hear it rather than wait for the dead worker.
        What to add to the log line."""
        if self.settings.state_store != "owned":
            return ""
        import redis

        from rnnserve.service.sessions.owned.reaping import declare_dead

        settings = self.settings
        try:
            lost = declare_dead(
                settings.redis_url, worker.id, settings.session_idle_timeout_s,
                timeout_s=settings.state_store_timeout_s,
            )  # fmt: skip
        except redis.RedisError as error:  # the workers' sweeps reap it once Redis answers
            return f" (its sequences could not be declared lost now: {error})"
        if lost == 0:  # it held none, or a worker's sweep reaped it first and logged how many
            return "; no sequence of its was left to declare lost"
        return f"; the sequences it held are lost: {lost}"

    def _restart_due(self) -> None:
        now = time.monotonic()
        for when, index in [due for due in self._due if due[0] <= now]:
            self._due.remove((when, index))
            if self.stopping:
                continue
            worker = self._start(index)
            self.restarts += 1
            log.info("started %s again", worker.name)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("%s: stopping the workers", signal.Signals(signum).name)
        self._stop_workers()

    def _forward_hangup(self, signum: int, frame: FrameType | None) -> None:
        """SIGHUP: every worker reads its token file again."""
        for worker in self.workers:
            if worker.process.exitcode is None and worker.process.pid is not None:
                os.kill(worker.process.pid, signal.SIGHUP)

    def _stop_workers(self) -> None:
        if self.stop_deadline is None:
            self.stop_deadline = time.monotonic() + self.settings.grace_period_s + KILL_MARGIN_S
        for worker in self.workers:
            if worker.process.exitcode is None:
                assert worker.process.pid is not None  # every worker listed was started
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

        def open_gate() -> None:
            if not opened.done():
                opened.set_result(None)

        loop.add_reader(fd, open_gate)
        try:
            await opened
        finally:
            loop.remove_reader(fd)
        self.connection.recv()  # OPEN; EOFError if the supervisor is gone: do not serve


def _death(code: int | None) -> str:
    """How a process ended, in words: its exit status, or the signal that killed it."""
    if code is not None and code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited unexpectedly with {code}"


def run_worker(
    settings: Settings, gate: Connection, log_level: str, worker_id: str, index: int
) -> None:
    """A worker's main function (it runs in a fresh interpreter); `worker_id` names it in
    the owned store, `index` is its place among the workers (a restarted worker's is the
    dead one's)."""
    # Ctrl-C reaches the whole process group: the supervisor forwards it as SIGTERM, and
    # until the server installs its own handlers the worker must not die of it mid-import.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A SIGHUP forwarded before the server handles it (rereading its token file) must not
    # kill the worker either: the file is polled as well.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from rnnserve.service import logs

    logs.configure(log_level, settings.log_format, settings.access_log, worker=True)

    from rnnserve.service.server import serve_process

    serve_process(settings, start_gate=_PipeGate(gate), worker=worker_id, index=index)
