"""Prometheus metrics: every name the server exports is defined here, once.

Labels `model` and `version` identify a loaded model version. Buckets run from tens of
microseconds (one ORT step of a small RNN) to seconds (long sequences, queueing).

With `--workers N` every worker records into prometheus_client's multiprocess files and the
supervisor serves the sum (service/workers.py). Counters and histograms add up; each gauge
names how its workers' values combine: sessions held by live workers add up, and a model's
info and load time are one series per model however many workers loaded it.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
    "Requests answered, by RPC and gRPC status code name.",
    ["model", "version", "rpc", "code"],
)
REQUEST_DURATION = Histogram(
    "rnnserve_request_duration_seconds",
    "Time from receiving a request to answering it.",
    ["model", "version"],
    buckets=LATENCY_BUCKETS,
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
