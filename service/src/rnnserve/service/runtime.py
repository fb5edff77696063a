"""ONNX Runtime: one InferenceSession per graph of a loaded model version, the choice of
execution provider, and the truthful bookkeeping of every run (metrics and statistics).

A run ORT refuses as an invalid argument (its InvalidArgument: a value out of what the
graph takes, such as an id past an embedding's rows that no spec bounded) is the client's
mistake, INVALID_ARGUMENT naming the inputs fed; ORT's other failures (Fail,
RuntimeException, ...) stay INTERNAL, the server's."""

from __future__ import annotations

import copy
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import cast

import numpy as np
import onnxruntime as ort

from rnnserve.model.describe import ort_reason
from rnnserve.service import metrics
from rnnserve.service.device import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    DeviceArray,
    StateDevice,
    gpu_visible,
    held_on_device,
    preload_cuda,
    provider_options,
    resident_value,
)
from rnnserve.service.errors import InvalidArgument
from rnnserve.service.logs import OncePerCause
from rnnserve.service.settings import Settings
from rnnserve.service.types import InferStatistics, ModelStatistics

log = logging.getLogger(__name__)

_missing_providers = OncePerCause(log)
# ORT's status INVALID_ARGUMENT, as its Python binding raises it.
OrtInvalidArgument = ort.capi.onnxruntime_pybind11_state.InvalidArgument
# An ORT run as its binding takes it: output names, feeds, run options -> outputs.
_Run = Callable[[list[str], dict[str, np.ndarray], None], list[np.ndarray]]
Provider = str | tuple[str, dict[str, str]]  # a name, or a name with its options
# A graph's run as a task calls it (tasks/base.py's Execute): role, feeds -> outputs by name.
Execute = Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]


def choose_providers(settings: Settings) -> list[Provider]:
    """The configured providers this ONNX Runtime build offers, in configured order, CUDA
    with its options (the GPU settings); each one it lacks is warned about once, but CUDA
    where no one asked for it: it is in the default list, and a CPU-only machine with the
    CPU build is no cause for a warning on every start (only a GPU that could have served,
    or a list naming CUDA, is).

    CPU is always appended last: ORT falls back to it for any node another provider
    cannot run, and it is the only choice when nothing configured is available."""
    built = ort.get_available_providers()
    gpu = gpu_visible()
    # The GPU build lists CUDA on a machine without a GPU too, where it cannot start.
    available = built if gpu else [name for name in built if name != CUDA_PROVIDER]
    expected_cuda = "providers" in settings.model_fields_set or gpu
    for name in settings.providers:
        if name not in available and (name != CUDA_PROVIDER or expected_cuda):
            _missing_providers.warn(
                name,
                "execution provider %s is configured but %s (it has %s); models run on the others",
                name,
                "no GPU is visible" if name in built else "this ONNX Runtime build lacks it",
                ", ".join(available),
            )
    chosen: list[Provider] = [
        (name, options) if (options := provider_options(settings, name)) else name
        for name in settings.providers
        if name in available and name != CPU_PROVIDER
    ]
    if any(name == CUDA_PROVIDER for name in settings.providers if name in available):
        preload_cuda()
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
            batch = self._stats.batch_stats.get(rows)
            if batch is None:  # not setdefault: that would make one on every run
                batch = self._stats.batch_stats[rows] = InferStatistics()
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
        # `instances_per_device` sessions of each graph, taken in turn by the runs.
        instances = {
            role: [
                ort.InferenceSession(str(path), sess_options=options, providers=providers)
                for _ in range(settings.instances_per_device)
            ]
            for role, path in graph_files.items()
        }
        self.sessions = {role: sessions[0] for role, sessions in instances.items()}
        self._turns = {role: itertools.cycle(sessions) for role, sessions in instances.items()}
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
        self._runs: dict[str, _Run] = {
            role: sessions[0]._sess.run if len(sessions) == 1 else _InTurn(sessions)
            for role, sessions in instances.items()
        }
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

    def resident(self, device: StateDevice, states: frozenset[str], on_loop: bool) -> Execute:
        """How a session's step runs its graphs with device_state: as `run` (`run_on_loop`
        with `on_loop`), but with its inputs bound where they are (a resident state read on
        the device) and its outputs named in `states` left on `device`, as DeviceArrays,
        for the store to scatter; the other outputs come to the host."""

        def execute(role: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            name, axis = self._rows_at[role]
            rows = int(feeds[name].shape[axis])
            start = time.perf_counter_ns()
            outputs = self._bound_run(role, feeds, device, states)
            ns = time.perf_counter_ns() - start
            self.statistics.record_execution(rows, ns)
            if on_loop:
                self._compute_tally.observe(ns / 1e9)
                self._batch_tally.observe(rows)
            else:
                self._compute_seconds.observe(ns / 1e9)
                self._batch_size.observe(rows)
            return outputs

        return execute

    def _bound_run(
        self, role: str, feeds: dict[str, np.ndarray], device: StateDevice, states: frozenset[str]
    ) -> dict[str, np.ndarray]:
        session = next(self._turns[role])
        binding = session.io_binding()
        for name, value in feeds.items():
            on_device = resident_value(value)
            if on_device is not None:
                binding.bind_ortvalue_input(name, on_device)
            else:
                binding.bind_cpu_input(name, value)
        names = self._output_names[role]
        for name in names:
            if name in states:
                binding.bind_output(name, device.kind, device.device_id)
            else:
                binding.bind_output(name, "cpu")
        try:
            session.run_with_iobinding(binding)
        except OrtInvalidArgument as error:
            host = {name: value for name, value in feeds.items() if resident_value(value) is None}
            raise refused(self.name, host, error) from None
        return {
            name: held_on_device(DeviceArray(value, device)) if name in states else value.numpy()
            for name, value in zip(names, binding.get_outputs(), strict=True)
        }


class _InTurn:
    """The runs of a graph's sessions (`instances_per_device`), taken in turn."""

    def __init__(self, sessions: list[ort.InferenceSession]) -> None:
        self._runs = itertools.cycle([session._sess.run for session in sessions])

    def __call__(
        self, names: list[str], feeds: dict[str, np.ndarray], options: None
    ) -> list[np.ndarray]:
        return cast(list[np.ndarray], next(self._runs)(names, feeds, options))


def refused(model: str, feeds: dict[str, np.ndarray], error: Exception) -> InvalidArgument:
    """ORT refused a run's values: the client's error, naming the inputs that may be at fault
    (the integer ones, which index tables, else every one fed) and ORT's reason."""
    suspects = [name for name, value in feeds.items() if value.dtype.kind in "iu"] or list(feeds)
    log.debug("model %s: ONNX Runtime refused a run's values: %s", model, error)
    return InvalidArgument(
        f"model '{model}' refused the values of input {', '.join(map(repr, suspects))}: "
        f"{ort_reason(error)}"
    )
