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
names how its workers' values combine: sessions held by live workers add up, and a model's
info and load time are one series per model however many workers loaded it.
"""

from __future__ import annotations

import bisect

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)

from rnnserve.errors import UsageError

disable_created_metrics()

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
SESSIONS_ACTIVE = Gauge(
    "rnnserve_sessions_active",
    "Sessions holding state.",
    ["model", "version"],
    multiprocess_mode="livesum",
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
    "1 while the session state store answered its last sweep, 0 when it failed (Redis "
    "unreachable); the lowest of the workers.",
    multiprocess_mode="livemin",
)
START_TIME = Gauge(
    "rnnserve_start_time_seconds",
    "Unix time at which the newest server process (worker) started: it changes on a restart.",
    multiprocess_mode="max",
)


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


def serve(port: int, host: str, registry: CollectorRegistry = REGISTRY) -> None:
    """The /metrics endpoint, in a thread; UsageError when its port cannot be bound."""
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as error:
        raise UsageError(
            f"--metrics-port {port}: cannot listen on {host}:{port}: {error.strerror}"
        ) from None
