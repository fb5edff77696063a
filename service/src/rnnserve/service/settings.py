"""Typed server settings. Environment variables `RNNSERVE_<FIELD>` override the
defaults; command-line flags of `rnnserve serve` override both."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rnnserve.service.redis_url import check_url


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RNNSERVE_", protected_namespaces=())

    # Where and how to listen.
    model_repository: Path = Path("models")
    host: str = "0.0.0.0"
    grpc_port: int = 8001
    http_port: int = Field(8000, ge=0, description="HTTP/REST port (0 disables REST)")
    metrics_port: int = 8002  # 0 disables the /metrics endpoint
    metrics_host: str = ""  # where /metrics listens ("": on `host`), e.g. a private address
    workers: int = Field(1, ge=1, description="server processes sharing the port")
    # A worker that dies is started again while the others serve (at once, then after 1, 2,
    # 4... up to 10 s while deaths follow each other); the server stops (exit 1) once
    # `worker_restart_limit` workers died within `worker_restart_window_s`.
    worker_restart_limit: int = Field(5, ge=1)
    worker_restart_window_s: float = Field(60.0, gt=0)
    grace_period_s: float = Field(30.0, ge=0, description="SIGTERM: time to finish in flight")

    # Model control, as Triton's: none (the repository as it was at start), poll (version
    # folders added and removed while running are loaded and unloaded), explicit (only
    # RepositoryModelLoad and RepositoryModelUnload change what is loaded; `load_model`
    # names the models loaded at start, "*" for all).
    model_control_mode: Literal["none", "poll", "explicit"] = "none"
    repository_poll_s: float = Field(15.0, gt=0, description="poll mode: seconds between scans")
    load_model: list[str] = []
    # Readiness: with strict_readiness the server is not ready while any version failed to
    # load; with exit_on_error it stops at start if any did. Either way a server with no
    # model loaded is not ready.
    strict_readiness: bool = False
    exit_on_error: bool = False

    # Security (service/tls.py, service/auth.py). PEM files: with a certificate and its key
    # the gRPC and REST ports speak TLS; with a client CA too they require client
    # certificates signed by it (mutual TLS), whose subject common name is the principal.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # One line per principal: name, SHA-256 of its bearer token, roles (infer, admin).
    auth_tokens: Path | None = None
    reflection: bool = True  # gRPC server reflection (open to all, like health checks)

    @field_validator("tls_cert", "tls_key", "tls_client_ca", "auth_tokens", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        """An empty value (RNNSERVE_TLS_CERT= in a compose file) names no file."""
        return None if value == "" else value

    @property
    def metrics_address(self) -> str:
        """Where /metrics listens: `metrics_host`, else `host`."""
        return self.metrics_host or self.host

    # ONNX Runtime.
    providers: list[str] = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    intra_op_threads: int = Field(1, ge=0, description="0 lets ORT choose")
    inter_op_threads: int = Field(1, ge=0, description="0 lets ORT choose")
    compute_threads: int = Field(4, ge=1, description="threads running models off the event loop")
    # A request this small runs on the event loop: its work (tens of µs for a step of the
    # default models) costs less than the hand-off to a compute thread and back. 0 sends
    # every request to the compute threads (models whose one step takes milliseconds).
    inline_max_bytes: int = Field(1024, ge=0, description="largest request run on the loop")

    # Input limits, checked before ONNX Runtime sees a tensor.
    max_batch_size: int = Field(1024, ge=1)
    max_sequence_length: int = Field(100_000, ge=1)
    max_message_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    # The memory budget (service/dataplane/budget.py), sized for a 2 GB container: the
    # elements one request implies (inputs, outputs, the recurrent kernels' working memory:
    # rows x time steps x what a step holds), and the bytes of all requests in flight in
    # one server process. Past either: RESOURCE_EXHAUSTED, before any work.
    max_request_elements: int = Field(64 * 1024 * 1024, ge=1)
    max_inflight_bytes: int = Field(1024 * 1024 * 1024, ge=1)

    # Sequences (stateful sessions).
    session_idle_timeout_s: float = Field(60.0, gt=0)
    max_sessions: int = Field(100_000, ge=1)
    # Sessions one principal (an authenticated client; everyone is `anonymous` without
    # authentication) may hold at once; None: only max_sessions limits them.
    max_sessions_per_principal: int | None = Field(None, ge=1)
    # memory: this process only. redis: every step read from and written to Redis (any
    # number of processes; survives crashes). owned: each state in the memory of the
    # process that steps it, handed over through Redis when another process needs it.
    state_store: Literal["memory", "redis", "owned"] = "memory"
    # One Redis (redis://, rediss://, unix://) or a Redis Cluster: redis+cluster:// (or
    # rediss+cluster://) and any node's address (service/redis_url.py; how the stores use it:
    # service/sessions/redis/client.py).
    redis_url: str = "redis://localhost:6379/0"
    # How long a call to Redis may take before it fails (UNAVAILABLE, retryable): a stopped
    # or unreachable Redis must not hold requests. (In a Redis Cluster a call is also tried
    # again through a failover, for a few seconds, before it fails.)
    state_store_timeout_s: float = Field(1.0, gt=0)
    # none: a write is acknowledged once the Redis master has it. replica: also once at least
    # one replica has it (WAIT), so that a failover loses no acknowledged step; a write no
    # replica confirms within state_durability_timeout_s fails the request UNAVAILABLE. That
    # wait comes on top of state_store_timeout_s: they bound different things.
    state_durability: Literal["none", "replica"] = "none"
    state_durability_timeout_s: float = Field(1.0, gt=0)

    @field_validator("redis_url")
    @classmethod
    def _cluster_database(cls, url: str) -> str:
        check_url(url)
        return url

    # Batching steps of different sessions into one ORT run. Off by default: for small
    # models on the CPU, gathering and splitting states costs more than the runs it merges
    # (docs/performance.md); it pays for large models and on a GPU.
    batching: bool = False
    batch_max_size: int = Field(64, ge=1)
    batch_max_queue_delay_us: int = Field(500, ge=0)

    # Logs (service/logs.py): text or JSON lines; the access log writes one per request.
    log_format: Literal["text", "json"] = "text"
    access_log: bool = False
