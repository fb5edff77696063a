"""Prometheus metrics: every name the server exports is defined here, once.

Labels `model` and `version` identify a loaded model version: a request's are those of the
version that answered it, or would have (the newest for a request naming none), also when
it failed; a model the repository does not know is labelled "" (clients choose the names
they send, and must not grow the series without bound). `rpc` is the protocol's RPC name
(REST routes are named after the RPC they mirror), `code` the gRPC status name, `protocol`
"grpc" or "http". Buckets run from tens of microseconds (one ORT step of a small RNN) to
seconds (long sequences, queueing). No `_created` series: they double every counter and
histogram for a timestamp nobody queries (`rnnserve_start_time_seconds` tells restarts).

With `--workers N` every worker records into prometheus_client's multiprocess files and the
supervisor serves the sum (service/workers.py). Counters and histograms add up; each gauge
names how its workers' values combine: requests in flight of live workers add up, and a
model's info and load time are one series per model however many workers loaded it.

Some series are not recorded but read when scraped, by collectors (below): the sessions
holding state, counted by the state store itself (`SessionsActive`: a crash, a restart or a
store that lost its data cannot skew a count nobody increments), and the supervisor's
worker restarts (`WorkerRestarts`). A lone server registers the first with the store it
opened; with workers the supervisor registers both, counting the sessions once in the Redis
every worker shares (summing each worker's view of it would multiply them). Where a GPU can
be read (NVML), the process serving /metrics also reads its utilisation and memory
(`GpuMetrics`, `rnnserve_gpu_*`).
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
    values,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from rnnserve.protocol.errors import UsageError

log = logging.getLogger(__name__)

disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated

LATENCY_BUCKETS = (
    2.5e-5,
    5e-5,
    1e-4,
    2.5e-4,
    5e-4,
    1e-3,
    2.5e-3,
    5e-3,
    1e-2,
    2.5e-2,
    5e-2,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

REQUESTS = Counter(
    "rnnserve_requests",
    "Requests answered (health probes aside), by RPC and gRPC status code name.",
    ["model", "version", "rpc", "code", "protocol"],
)
REQUEST_DURATION = Histogram(
    "rnnserve_request_duration_seconds",
    "Inference requests: time from receiving one to its last response, by outcome.",
    ["model", "version", "rpc", "code", "protocol"],
    buckets=LATENCY_BUCKETS,
)
REQUESTS_IN_FLIGHT = Gauge(
    "rnnserve_requests_in_flight",
    "Requests being answered (those rnnserve_requests_total counts once answered).",
    ["model", "version"],
    multiprocess_mode="livesum",
)
AUTH_REFUSED = Counter(
    "rnnserve_auth_refused",
    "Calls refused before their handler: UNAUTHENTICATED (no valid credentials) or "
    "PERMISSION_DENIED (a principal without the role the RPC needs).",
    ["rpc", "code"],
)
QUEUE_DURATION = Histogram(
    "rnnserve_queue_duration_seconds",
    "Time a step waited before its ORT run started.",
    ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
COMPUTE_DURATION = Histogram(
    "rnnserve_compute_duration_seconds",
    "Time of one ONNX Runtime run.",
    ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "rnnserve_batch_size",
    "Rows per ONNX Runtime run.",
    ["model", "version"],
    buckets=BATCH_BUCKETS,
)
REQUEST_BYTES_IN_FLIGHT = Gauge(
    "rnnserve_request_bytes_in_flight",
    "Memory the inference requests in flight may take (inputs, outputs and the recurrent "
    "work they imply), as admission estimated it against max_inflight_bytes.",
    multiprocess_mode="livesum",
)
REQUEST_MESSAGE_BYTES = Gauge(
    "rnnserve_request_message_bytes",
    "Memory the inference requests' messages take in the budget beside their footprints: "
    "while one arrives, the largest received (a REST body: its Content-Length), then its "
    "size until its request ends.",
    multiprocess_mode="livesum",
)
REQUEST_BYTES_LIMIT = Gauge(
    "rnnserve_request_bytes_limit",
    "max_inflight_bytes: the most memory the inference requests in flight of one server "
    "process may take; past it requests are refused RESOURCE_EXHAUSTED.",
    multiprocess_mode="max",
)
SESSIONS_STARTED = Counter(
    "rnnserve_sessions_started", "Sessions started (or restarted).", ["model", "version"]
)
SESSIONS_ENDED = Counter(
    "rnnserve_sessions_ended", "Sessions ended by the client.", ["model", "version"]
)
SESSIONS_EXPIRED = Counter(
    "rnnserve_sessions_expired", "Sessions dropped after idling too long.", ["model", "version"]
)
SESSIONS_HANDED_OVER = Counter(
    "rnnserve_sessions_handed_over",
    "Sessions a worker gave up to another worker, or to Redis at a clean stop (state_store=owned).",
    ["model", "version"],
)
SESSIONS_LIMIT = Gauge(
    "rnnserve_sessions_limit",
    "The most sessions that may hold state at once (max_sessions).",
    multiprocess_mode="max",
)
SEQUENCE_RETRIES = Counter(
    "rnnserve_sequence_retries",
    "Retries of a sequence's last step (same sequence_offset and inputs) answered again "
    "without applying the step twice.",
    ["model", "version"],
)
SESSIONS_REJECTED = Counter(
    "rnnserve_sessions_rejected",
    "Session starts refused at the session limit.",
    ["model", "version"],
)
MODEL_INFO = Gauge(
    "rnnserve_model_info",
    "A loaded model version (always 1).",
    ["model", "version", "task", "cell", "provider"],
    multiprocess_mode="max",
)
MODEL_LOAD_DURATION = Gauge(
    "rnnserve_model_load_duration_seconds",
    "Time taken to load a model version.",
    ["model", "version"],
    multiprocess_mode="max",
)
STATE_STORE_UP = Gauge(
    "rnnserve_state_store_up",
    "1 while the session state store answers, 0 from a call that could not reach it (Redis "
    "unreachable) until one does again; the lowest of the workers.",
    multiprocess_mode="livemin",
)
STATE_STORE_ERRORS = Counter(
    "rnnserve_state_store_errors",
    "Calls to the session state store that could not reach it (each answered UNAVAILABLE, "
    "or retried by the sweeper), by store and operation.",
    ["store", "operation"],
)
START_TIME = Gauge(
    "rnnserve_start_time_seconds",
    "Unix time at which the newest server process (worker) started: it changes on a restart.",
    multiprocess_mode="max",
)


class Tally:
    """A counter's or gauge's labelled child, kept on every request in a plain Python number
    by the event loop's thread (the one thread that may change it), and written into the
    child by `flush()`: what it gained or lost since the last flush. A step then pays an
    addition, not prometheus_client's lock and method calls (a few microseconds a request
    for the series every request feeds); the series read the same once flushed."""

    __slots__ = ("_child", "_written", "value")

    def __init__(self, child: Counter | Gauge) -> None:
        self._child = child
        self.value = 0.0
        self._written = 0.0

    def flush(self) -> None:
        value = self.value  # read once: the loop's thread may add to it meanwhile
        if value != self._written:
            self._child.inc(value - self._written)
            self._written = value


class Spread:
    """A histogram's labelled child, kept as `Tally` keeps a counter: the observations'
    bucket counts and sum in plain Python numbers, written into the child's own values
    (`_buckets`, `_sum`, as `Observer` writes them) by `flush()`."""

    __slots__ = ("_bounds", "_buckets", "_counts", "_sum", "_written", "_written_sum", "sum")

    def __init__(self, child: Histogram) -> None:
        self._bounds = child._upper_bounds  # ends with +Inf: every amount has a bucket
        self._buckets = child._buckets
        self._sum = child._sum
        self._counts = [0] * len(self._bounds)
        self._written = [0] * len(self._bounds)
        self.sum = 0.0
        self._written_sum = 0.0

    def observe(self, amount: float) -> None:
        self.sum += amount
        # The first bucket whose upper bound is >= amount (`le`), as observe() finds it.
        self._counts[bisect.bisect_left(self._bounds, amount)] += 1

    def flush(self) -> None:
        for index, count in enumerate(self._counts):
            if count != self._written[index]:
                self._buckets[index].inc(count - self._written[index])
                self._written[index] = count
        total = self.sum
        if total != self._written_sum:
            self._sum.inc(total - self._written_sum)
            self._written_sum = total


class Tallies:
    """Every Tally and Spread of the process, and when they are written.

    A lone server writes them when /metrics is scraped (`serve`), so a scrape reads every
    request answered before it. A worker's series are files its supervisor reads, without
    asking the worker: it writes them whenever it has no request in flight, and under a
    load that never leaves it idle at least every `FLUSH_S`. Flushes from the scrape's
    thread and the loop's are serialised; additions are made by the loop's thread alone."""

    FLUSH_S = 1.0

    def __init__(self) -> None:
        self._kept: list[Tally | Spread] = []
        self._lock = threading.Lock()
        self.in_flight = 0  # requests being recorded (front ends' Recordings)
        self._flushed_at = 0.0
        # A worker's metrics are files (prometheus_client's multiprocess mode, which its
        # supervisor chose before starting it: service/workers.py).
        self.by_worker = values.ValueClass is not values.MutexValue

    def counter(self, child: Counter | Gauge) -> Tally:
        tally = Tally(child)
        self._kept.append(tally)
        return tally

    def histogram(self, child: Histogram) -> Spread:
        spread = Spread(child)
        self._kept.append(spread)
        return spread

    def answered(self, now: float) -> None:
        """A request was recorded (`now`: time.perf_counter()); a worker writes its tallies
        once idle, or after FLUSH_S."""
        if self.by_worker and (not self.in_flight or now - self._flushed_at > self.FLUSH_S):
            self._flushed_at = now
            self.flush()

    def flush(self) -> None:
        with self._lock:
            for kept in self._kept:
                kept.flush()


TALLIES = Tallies()


class Flushed:
    """The registry /metrics reads, writing the tallies first (a lone server's)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        TALLIES.flush()
        return self._registry.collect()

    def restricted_registry(self, names: Iterable[str]) -> Any:
        TALLIES.flush()
        return self._registry.restricted_registry(names)


class Observer:
    """A histogram's labelled child, observed on every request: the same sum and bucket
    counts as its `observe`, found by bisection instead of prometheus_client's scan of the
    buckets, and without its per-call checks (a few microseconds a request for the four
    histograms a step feeds). It writes the child's own values (prometheus_client's `_sum`
    and `_buckets`, per process or multiprocess files alike)."""

    __slots__ = ("_bounds", "_buckets", "_sum")

    def __init__(self, child: Histogram) -> None:
        self._bounds = child._upper_bounds  # ends with +Inf: every amount has a bucket
        self._buckets = child._buckets
        self._sum = child._sum

    def observe(self, amount: float) -> None:
        self._sum.inc(amount)
        # The first bucket whose upper bound is >= amount (`le`), as observe() finds it.
        self._buckets[bisect.bisect_left(self._bounds, amount)].inc(1)


# Series read when scraped.

SESSIONS_ACTIVE = "rnnserve_sessions_active"
WORKER_RESTARTS = "rnnserve_worker_restarts"
GPU_UTILIZATION = "rnnserve_gpu_utilization_ratio"
GPU_MEMORY_USED = "rnnserve_gpu_memory_used_bytes"
GPU_MEMORY_TOTAL = "rnnserve_gpu_memory_total_bytes"

# (model, version) -> sessions holding state, as a state store counts them.
SessionCounts = Mapping[tuple[str, str], int]


class SessionsActive:
    """`rnnserve_sessions_active{model,version}`, counted by the state store at each scrape
    (`count`, called in the scrape's thread). A store that cannot count (Redis unreachable)
    leaves the series out of that scrape rather than show a stale number."""

    def __init__(self, count: Callable[[], SessionCounts]) -> None:
        self._count = count

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        try:
            counts = self._count()
        except Exception as error:  # the store's outage is told elsewhere, once
            log.debug("counting sessions for /metrics failed: %s", error)
        else:
            for (model, version), count in sorted(counts.items()):
                family.add_metric([model, version], count)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            SESSIONS_ACTIVE,
            "Sessions holding state, counted by the state store when scraped (with the redis "
            "and owned stores: in the Redis every server process shares).",
            labels=["model", "version"],
        )


class WorkerRestarts:
    """`rnnserve_worker_restarts_total`: workers the supervisor started again after they
    died (`restarts`, read at each scrape)."""

    def __init__(self, restarts: Callable[[], int]) -> None:
        self._restarts = restarts

    def describe(self) -> Iterator[Metric]:
        yield self._family(None)

    def collect(self) -> Iterator[Metric]:
        yield self._family(self._restarts())

    @staticmethod
    def _family(value: int | None) -> CounterMetricFamily:
        return CounterMetricFamily(
            WORKER_RESTARTS,
            "Workers (--workers) the supervisor started again after one died on its own.",
            value=value,
        )


@dataclass(frozen=True)
class GpuReading:
    """One GPU now, as NVML reads it (service/nvml.py)."""

    device: str  # its index, as CUDA_VISIBLE_DEVICES and `gpu_device_id` number it
    utilization: float  # the share of the last sample period a kernel ran, 0 to 1
    memory_used: int  # bytes
    memory_total: int


class GpuMetrics:
    """`rnnserve_gpu_*{device}`: each GPU's utilisation and memory, read at each scrape
    (`read`); registered only where a GPU can be read, so absent on a CPU-only machine."""

    def __init__(self, read: Callable[[], list[GpuReading]]) -> None:
        self._read = read

    def describe(self) -> Iterator[Metric]:
        yield from self._families([])

    def collect(self) -> Iterator[Metric]:
        try:
            readings = self._read()
        except Exception as error:  # a GPU gone or NVML failing: no stale numbers
            log.debug("reading the GPUs for /metrics failed: %s", error)
            readings = []
        yield from self._families(readings)

    @staticmethod
    def _families(readings: list[GpuReading]) -> list[GaugeMetricFamily]:
        families = [
            GaugeMetricFamily(
                GPU_UTILIZATION, "Share of time a GPU ran kernels (NVML).", labels=["device"]
            ),
            GaugeMetricFamily(
                GPU_MEMORY_USED, "GPU memory in use, in bytes (NVML).", labels=["device"]
            ),
            GaugeMetricFamily(GPU_MEMORY_TOTAL, "GPU memory, in bytes (NVML).", labels=["device"]),
        ]
        for reading in readings:
            values = (reading.utilization, reading.memory_used, reading.memory_total)
            for family, value in zip(families, values, strict=True):
                family.add_metric([reading.device], value)
        return families


def serve(port: int, host: str, registry: CollectorRegistry = REGISTRY) -> None:
    """The /metrics endpoint, in a thread; UsageError when its port cannot be bound."""
    try:
        start_http_server(port, addr=host, registry=Flushed(registry))
    except OSError as error:
        raise UsageError(
            f"--metrics-port {port}: cannot listen on {host}:{port}: {error.strerror}"
        ) from None
