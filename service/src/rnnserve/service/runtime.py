"""ONNX Runtime: one InferenceSession per graph of a loaded model version, the choice of
execution provider, and the truthful bookkeeping of every run (metrics and statistics).

A run ORT refuses as an invalid argument (its InvalidArgument: a value out of what the
graph takes, such as an id past an embedding's rows that no spec bounded) is the client's
mistake, INVALID_ARGUMENT naming the inputs fed; ORT's other failures (Fail,
RuntimeException, ...) stay INTERNAL, the server's."""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import cast

import numpy as np
import onnxruntime as ort

from rnnserve.model.describe import ort_reason
from rnnserve.service import metrics
from rnnserve.service.errors import InvalidArgument
from rnnserve.service.logs import OncePerCause
from rnnserve.service.settings import Settings
from rnnserve.service.types import InferStatistics, ModelStatistics

log = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"
_missing_providers = OncePerCause(log)
# ORT's status INVALID_ARGUMENT, as its Python binding raises it.
OrtInvalidArgument = ort.capi.onnxruntime_pybind11_state.InvalidArgument


def choose_providers(settings: Settings) -> list[str]:
    """The configured providers this ONNX Runtime build offers, in configured order; each
    one it lacks is warned about once.

    CPU is always appended last: ORT falls back to it for any node another provider
    cannot run, and it is the only choice when nothing configured is available."""
    available = ort.get_available_providers()
    for name in settings.providers:
        if name not in available:
            _missing_providers.warn(
                name,
                "execution provider %s is configured but this ONNX Runtime build lacks it "
                "(it has %s); models run on the others",
                name,
                ", ".join(available),
            )
    chosen = [name for name in settings.providers if name in available and name != CPU_PROVIDER]
    return [*chosen, CPU_PROVIDER]


def session_options(settings: Settings) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = settings.inter_op_threads
    options.log_severity_level = 3  # errors only: ORT warns about benign graph rewrites
    # No CPU memory arena: the arena keeps, for the life of the process, the peak of the
    # largest request it ever ran (gigabytes, for a long batch). Without it each run's
    # buffers go back to the allocator, and the large ones (mmapped) to the system, so
    # resident memory returns to its level; small runs measured no slower (tens of µs).
    options.enable_cpu_mem_arena = False
    return options


class Statistics:
    """Cumulative per-version statistics, updated from many compute threads at once."""

    def __init__(self, name: str, version: str) -> None:
        self._lock = threading.Lock()
        self._stats = ModelStatistics(name=name, version=version)

    def record_execution(self, rows: int, ns: int) -> None:
        with self._lock:
            self._stats.execution_count += 1
            batch = self._stats.batch_stats.setdefault(rows, InferStatistics())
            batch.count += 1
            batch.ns += ns

    def record_success(
        self,
        rows: int,
        total_ns: int,
        queue_ns: int,
        input_ns: int,
        infer_ns: int,
        output_ns: int,
    ) -> None:
        with self._lock:
            stats = self._stats
            stats.inference_count += rows
            stats.last_inference_ms = time.time_ns() // 1_000_000
            for part, ns in (
                (stats.success, total_ns),
                (stats.queue, queue_ns),
                (stats.compute_input, input_ns),
                (stats.compute_infer, infer_ns),
                (stats.compute_output, output_ns),
            ):
                part.count += 1
                part.ns += ns

    def record_failure(self, total_ns: int) -> None:
        with self._lock:
            self._stats.fail.count += 1
            self._stats.fail.ns += total_ns

    def snapshot(self) -> ModelStatistics:
        with self._lock:
            return copy.deepcopy(self._stats)


class ModelRuntime:
    """The ORT sessions of one model version, keyed by graph role."""

    def __init__(
        self,
        name: str,
        version: str,
        graph_files: Mapping[str, Path],
        settings: Settings,
        batch_axes: Mapping[str, Mapping[str, int]] | None = None,
    ) -> None:
        """`batch_axes`: per graph role, the tensors whose batch axis is not 0."""
        self.name = name
        self.version = version
        providers = choose_providers(settings)
        options = session_options(settings)
        self.sessions = {
            role: ort.InferenceSession(str(path), sess_options=options, providers=providers)
            for role, path in graph_files.items()
        }
        # Graph signatures, read once: ORT builds new node objects on every get_inputs().
        self._input_names = {
            role: [node.name for node in session.get_inputs()]
            for role, session in self.sessions.items()
        }
        self._output_names = {
            role: [node.name for node in session.get_outputs()]
            for role, session in self.sessions.items()
        }
        # Where to count a run's rows: the first input's batch axis.
        self._rows_at = {
            role: (names[0], (batch_axes or {}).get(role, {}).get(names[0], 0))
            for role, names in self._input_names.items()
        }
        # Each graph's run as ORT's binding does it: the wrapper's InferenceSession.run
        # checks, on every call, what the tasks validated once (every input fed, the
        # output names), a tenth of a step's time.
        self._runs = {role: session._sess.run for role, session in self.sessions.items()}
        self.statistics = Statistics(name, version)
        # Observed by the request timer on the event loop's thread: a tally.
        self.queue_seconds = metrics.TALLIES.histogram(metrics.QUEUE_DURATION.labels(name, version))
        compute_seconds = metrics.COMPUTE_DURATION.labels(name, version)
        batch_size = metrics.BATCH_SIZE.labels(name, version)
        self._compute_seconds = metrics.Observer(compute_seconds)
        self._batch_size = metrics.Observer(batch_size)
        self._compute_tally = metrics.TALLIES.histogram(compute_seconds)
        self._batch_tally = metrics.TALLIES.histogram(batch_size)

    @property
    def provider(self) -> str:
        """The provider actually serving the graphs (the first one ORT accepted)."""
        providers = next(iter(self.sessions.values())).get_providers()
        return cast(str, providers[0])  # ORT has no types: a list of provider names

    def input_names(self, role: str) -> list[str]:
        return self._input_names[role]

    def output_names(self, role: str) -> list[str]:
        return self._output_names[role]

    def run(self, role: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One ORT run of graph `role`: its outputs by name. Thread-safe, as ORT's run is."""
        outputs, rows, ns = self._timed_run(role, feeds)
        self._compute_seconds.observe(ns / 1e9)
        self._batch_size.observe(rows)
        return outputs

    def run_on_loop(self, role: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`run` on the event loop's thread, which alone keeps the tallies: its metrics
        without prometheus_client's locks (a small request runs there: compute.py)."""
        outputs, rows, ns = self._timed_run(role, feeds)
        self._compute_tally.observe(ns / 1e9)
        self._batch_tally.observe(rows)
        return outputs

    def _timed_run(
        self, role: str, feeds: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], int, int]:
        """The run's outputs by name, its rows and its nanoseconds (in the statistics)."""
        name, axis = self._rows_at[role]
        rows = int(feeds[name].shape[axis])
        names = self._output_names[role]
        start = time.perf_counter_ns()
        try:
            values = self._runs[role](names, feeds, None)
        except ort.capi.onnxruntime_pybind11_state.EPFail:
            # The wrapper's run falls back to the CPU provider when another one fails.
            values = self.sessions[role].run(names, feeds)
        except OrtInvalidArgument as error:
            raise refused(self.name, feeds, error) from None
        ns = time.perf_counter_ns() - start
        self.statistics.record_execution(rows, ns)
        return dict(zip(names, values, strict=True)), rows, ns


def refused(model: str, feeds: dict[str, np.ndarray], error: Exception) -> InvalidArgument:
    """ORT refused a run's values: the client's error, naming the inputs that may be at fault
    (the integer ones, which index tables, else every one fed) and ORT's reason."""
    suspects = [name for name, value in feeds.items() if value.dtype.kind in "iu"] or list(feeds)
    log.debug("model %s: ONNX Runtime refused a run's values: %s", model, error)
    return InvalidArgument(
        f"model '{model}' refused the values of input {', '.join(map(repr, suspects))}: "
        f"{ort_reason(error)}"
    )
