"""Typed server settings. Environment variables `RNNSERVE_<FIELD>` override the
defaults; command-line flags of `rnnserve serve` override both."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rnnserve.service import affinity, busy_poll
from rnnserve.service.event_loop import EventLoop
from rnnserve.service.redis_url import check_url


class Settings(BaseSettings):
    """Each field's description is its help: `rnnserve serve --help` shows it (a name in
    backquotes is another field, shown there as its flag)."""

    model_config = SettingsConfigDict(env_prefix="RNNSERVE_", protected_namespaces=())
    # Each default by keyword (Field(default=...)): the one a type checker reads as such.

    # Where and how to listen.
    model_repository: Path = Field(
        default=Path("models"), description="folder holding <name>/<version>/ model folders"
    )
    host: str = Field(default="0.0.0.0", description="address to listen on")
    grpc_port: int = Field(default=8001, description="gRPC port")
    # One grpc.aio server takes in one new call per turn of the event loop: many clients'
    # calls come in one at a time, and their steps cannot run together (grpc/frontend.py).
    grpc_listeners: int = Field(
        default=16,
        ge=1,
        le=64,
        description="grpc.aio servers in each process sharing the gRPC port: each takes in "
        "one new call at a time, so more take in many clients' calls together",
    )
    http_port: int = Field(default=8000, ge=0, description="HTTP/REST port (0 disables REST)")
    metrics_port: int = Field(default=8002, description="Prometheus /metrics port (0 disables it)")
    metrics_host: str = Field(
        default="", description="address /metrics listens on, e.g. a private one (default: `host`)"
    )
    # One process serves from one core (its event loop holds the GIL); `auto`, the
    # production setting, runs one per CPU it may use (docs/scaling.md).
    workers: int = Field(
        default=1,
        ge=1,
        description="server processes sharing the port ('auto': one per CPU it may use, by its "
        "affinity and its CPU quota)",
    )
    # A step's hand-offs between grpc's threads and the event loop wake no other core when
    # they share one (service/affinity.py). Off by default: two servers pinned alike on one
    # machine would share a core.
    cpu_affinity: str = Field(
        default="none",
        description="pin each server process's threads to one CPU: none, auto (the CPUs "
        "the process may run on) or a list such as 0,2-5; a lone server takes the first, "
        "worker i the i-th",
    )
    # Off where no core is to spare for it: one CPU, a quota under two, threads pinned.
    busy_poll_us: int = Field(
        default="auto",  # an int once read (_busy_poll_us)
        validate_default=True,
        ge=0,
        le=1_000_000,
        description="microseconds each server process's event loop keeps polling, without "
        "sleeping, after an inference request that ran alone and ended within as long of the "
        "one before of its session, so that the next finds it awake (0: it sleeps when idle; "
        "auto: 2000 where the process may use two CPUs or more and `cpu_affinity` is none, "
        "else 0); a core kept busy while a lone client keeps stepping",
    )
    # A worker that dies is started again while the others serve: at once, then after 1, 2,
    # 4... up to 10 s while deaths follow each other.
    worker_restart_limit: int = Field(
        default=5,
        ge=1,
        description="worker deaths within `worker_restart_window_s` that stop the server (exit 1)",
    )
    worker_restart_window_s: float = Field(
        default=60.0, gt=0, description="seconds over which worker deaths are counted"
    )
    grace_period_s: float = Field(
        default=30.0, ge=0, description="seconds to finish requests in flight after SIGTERM"
    )
    # Each process's event loop (service/event_loop.py).
    event_loop: EventLoop = Field(
        default="auto",
        description="the event loop of each server process: uvloop (libuv's, in C), asyncio "
        "(Python's own), or auto (uvloop where installed, else asyncio)",
    )

    # Model control, as Triton's. A server with no model loaded is never ready.
    model_control_mode: Literal["none", "poll", "explicit"] = Field(
        default="none",
        description="none (the repository as it was at start), poll (version folders added "
        "or removed while running are loaded or unloaded) or explicit (only the load and "
        "unload RPCs change what is loaded)",
    )
    repository_poll_s: float = Field(
        default=15.0, gt=0, description="poll mode: seconds between scans of the repository"
    )
    load_model: list[str] = Field(
        default=[], description="explicit mode: models loaded at start ('*': all)"
    )
    strict_readiness: bool = Field(
        default=False, description="not ready while any model version failed to load"
    )
    exit_on_error: bool = Field(
        default=False, description="stop at start if any model version failed to load"
    )

    # Security (service/tls.py, service/auth.py).
    tls_cert: Path | None = Field(
        default=None,
        description="PEM certificate chain: serve TLS on the gRPC and REST ports (with `tls_key`)",
    )
    tls_key: Path | None = Field(default=None, description="PEM private key of `tls_cert`")
    tls_client_ca: Path | None = Field(
        default=None,
        description="PEM CA: require client certificates it signed (mutual TLS); a "
        "certificate's subject common name is its principal",
    )
    auth_tokens: Path | None = Field(
        default=None,
        description="token file: a line per principal (name, SHA-256 of its bearer token, "
        "roles: infer, admin)",
    )
    reflection: bool = Field(
        default=True, description="gRPC server reflection (open to all, like health checks)"
    )

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: object) -> object:
        """`auto`: one per CPU this process may use, by its affinity (as a container's cpuset
        limits it) and its control group's CPU quota (a container's CPU limit), whole CPUs
        only and at least one: a worker per host core under a limit of two would be throttled
        together."""
        if value == "auto":
            return affinity.whole_cpus()
        return value

    @field_validator("cpu_affinity")
    @classmethod
    def _cpu_affinity(cls, value: str) -> str:
        return affinity.parse(value)

    @field_validator("busy_poll_us", mode="before")
    @classmethod
    def _busy_poll_us(cls, value: object, info: ValidationInfo) -> object:
        """`auto`: polling where the process has a core to spare (service/busy_poll.py)."""
        if value == "auto":
            return busy_poll.auto_window_us(info.data.get("cpu_affinity", affinity.NONE))
        return value

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
    providers: list[str] = Field(
        default=["CUDAExecutionProvider", "CPUExecutionProvider"],
        description="ONNX Runtime execution providers, in preference",
    )
    intra_op_threads: int = Field(
        default=1, ge=0, description="ONNX Runtime intra-op threads (0: ORT chooses)"
    )
    inter_op_threads: int = Field(
        default=1, ge=0, description="ONNX Runtime inter-op threads (0: ORT chooses)"
    )
    # The GPU (the CUDA provider's options; service/device.py). ORT's defaults but the
    # device, which a user picks on a machine with several.
    gpu_device_id: int = Field(default=0, ge=0, description="the GPU the CUDA provider runs on")
    gpu_mem_limit: int = Field(
        default=0,
        ge=0,
        description="most bytes the CUDA provider's memory arena takes on the GPU (0: no limit)",
    )
    arena_extend_strategy: Literal["kNextPowerOfTwo", "kSameAsRequested"] = Field(
        default="kNextPowerOfTwo",
        description="how the CUDA provider's arena grows: kNextPowerOfTwo (fewer, larger "
        "extensions) or kSameAsRequested (only what a run asks: less memory held)",
    )
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = Field(
        default="EXHAUSTIVE",
        description="how cuDNN picks its algorithms: EXHAUSTIVE (benchmarks each at first "
        "use), HEURISTIC, or DEFAULT",
    )
    instances_per_device: int = Field(
        default=1,
        ge=1,
        description="ONNX Runtime sessions per graph on its device (Triton's instance "
        "count), taken in turn by the runs of concurrent requests",
    )
    # Session states between steps, with `state_store` memory (service/device.py).
    device_state: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="keep sequence states where the models run (on: in GPU memory with "
        "CUDA; a step copies only its inputs in and its outputs out); auto: on with CUDA, "
        "off on the CPU",
    )
    compute_threads: int = Field(
        default=4, ge=1, description="threads running models off the event loop"
    )
    # A small request runs on the event loop: its work (tens of µs for a step of the default
    # models) costs less than the hand-off to a compute thread and back. 0 suits models
    # whose one step takes milliseconds.
    inline_max_bytes: int = Field(
        default=1024,
        ge=0,
        description="largest request, in input bytes, run on the event loop (0: none)",
    )

    # Input limits, checked before ONNX Runtime sees a tensor.
    allow_unknown_parameters: bool = Field(
        default=False,
        description="accept request parameters the server does not read (clients that send "
        "their own); by default such a parameter is refused INVALID_ARGUMENT, naming the "
        "nearest known one",
    )
    max_batch_size: int = Field(default=1024, ge=1, description="largest batch accepted")
    max_sequence_length: int = Field(default=100_000, ge=1, description="longest sequence accepted")
    max_message_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="largest gRPC message accepted or sent, and REST request body accepted "
        "(at most `max_inflight_bytes`)",
    )
    # A body still arriving holds its bytes in the memory budget (below), and a client
    # that stops sending must not hold them, nor its connection, for long.
    request_body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="seconds from a request's start until its body (REST) or ModelInfer "
        "message (gRPC) must have arrived; a later one is dropped",
    )
    # The memory budget (service/dataplane/budget.py), sized for a 2 GB container. Past
    # either limit: RESOURCE_EXHAUSTED, before any work.
    max_request_elements: int = Field(
        default=64 * 1024 * 1024,
        ge=1,
        description="most elements one request may imply (inputs, outputs, the recurrent "
        "kernels' work: rows x time steps x what a step holds)",
    )
    max_inflight_bytes: int = Field(
        default=1024 * 1024 * 1024,
        ge=1,
        description="most bytes the requests in flight of a server process may take, "
        "their messages from the moment they arrive",
    )

    @property
    def max_received_bytes(self) -> int:
        """The largest message or body received: `max_message_bytes`, within the budget
        (a larger one could never be held)."""
        return min(self.max_message_bytes, self.max_inflight_bytes)

    # Sequences (stateful sessions).
    session_idle_timeout_s: float = Field(
        default=60.0, gt=0, description="seconds before an idle sequence's state is dropped"
    )
    max_sessions: int = Field(
        default=100_000, ge=1, description="most sequences holding state at once"
    )
    max_sessions_per_principal: int | None = Field(
        default=None,
        ge=1,
        description="most sequences one principal (an authenticated client; without "
        "authentication all are one) may hold at once (default: no limit but `max_sessions`)",
    )
    state_store: Literal["memory", "redis", "owned"] = Field(
        default="memory",
        description="where sequence state lives: memory (this process only), redis (every "
        "step read from and written to Redis: any number of processes; survives crashes) or "
        "owned (each state in the process that steps it, handed over through Redis)",
    )
    redis_url: str = Field(
        default="redis://localhost:6379/0",
        description="Redis for `state_store` redis or owned: redis://host:port/0 (or "
        "rediss://, unix://), or any node of a Redis Cluster: redis+cluster://node:port (or "
        "rediss+cluster://)",
    )
    # A stopped or unreachable Redis must not hold requests. (In a Redis Cluster a call is
    # also tried again through a failover, for a few seconds, before it fails.)
    state_store_timeout_s: float = Field(
        default=1.0,
        gt=0,
        description="seconds a call to Redis may take before it fails (UNAVAILABLE, retryable)",
    )
    # replica: a write waits (WAIT) until a replica has it too, so that a failover loses no
    # acknowledged step.
    state_durability: Literal["none", "replica"] = Field(
        default="none",
        description="none (a step is answered once the Redis master has it), or replica "
        "(once a replica has it too; a write none confirms in time fails UNAVAILABLE)",
    )
    state_durability_timeout_s: float = Field(
        default=1.0,
        gt=0,
        description="replica durability: seconds a write waits for a replica (on top of "
        "`state_store_timeout_s`: they bound different things)",
    )

    @field_validator("redis_url")
    @classmethod
    def _cluster_database(cls, url: str) -> str:
        check_url(url)
        return url

    # Steps of different sessions that arrive in one turn of the event loop run as one
    # multi-session step (dataplane/coalescing.py): no thread and no waiting. A batch answers
    # each step exactly as alone: the first batches of each shape are checked against their
    # rows run alone, and a model whose batches differ in a bit (ORT's RNN cell rounds a
    # batch's rows unlike a lone row's) runs its steps alone.
    coalesce_steps: bool = Field(
        default=True,
        description="run the steps of different sequences that arrive together (in one turn "
        "of the event loop) as one ORT run, where that answers each as alone, bit for bit: "
        "continuations without sequence_offset, with the memory store and without `batching`",
    )
    # Unary calls reach their handlers at most one per listener (`grpc_listeners`) in a
    # turn of the loop: a turn gathers some of them, a few milliseconds more
    # (docs/performance.md). 0 by default: a lone turn adds no delay.
    coalesce_max_delay_us: int = Field(
        default=0,
        ge=0,
        description="microseconds a coalesced batch waits at most, from its first step, for "
        "others to join (0: the event loop's next turn); a batch of `batch_max_size` steps, "
        "or one with a step of every session of the recent batches, runs at once",
    )

    # Batching steps of different sessions into one ORT run. Off by default: for small
    # models on the CPU, gathering and splitting states costs more than the runs it merges
    # (docs/performance.md); it pays for large models and on a GPU.
    batching: bool = Field(
        default=False, description="batch steps of different sequences into one ORT run"
    )
    batch_max_size: int = Field(
        default=64,
        ge=1,
        description="most sequence steps batched (or coalesced) into one ORT run",
    )
    batch_max_queue_delay_us: int = Field(
        default=500, ge=0, description="microseconds a step waits at most for others to batch with"
    )

    # Batching concurrent stateless requests of a model version into one ORT run (Triton's
    # dynamic_batching): only requests equal in every dimension but the batch go together,
    # never padded. Off by default, as `batching`: on the CPU it pays only under load
    # (docs/benchmarks). A model's model.json may turn it on with knobs of its own.
    dynamic_batching: bool = Field(
        default=False,
        description="batch concurrent stateless requests of a model version into one ORT run "
        "(a model's model.json may turn it on for that model, with knobs of its own)",
    )
    dynamic_batch_max_size: int = Field(
        default=64, ge=1, description="most rows a dynamic batch gathers"
    )
    dynamic_batch_max_queue_delay_us: int = Field(
        default=100,
        ge=0,
        description="microseconds a stateless request waits at most for others to batch with",
    )
    dynamic_batch_preferred_sizes: list[int] = Field(
        default=[],
        description="batch sizes (rows) run as soon as gathered, without waiting out the "
        "queue delay",
    )

    @field_validator("dynamic_batch_preferred_sizes")
    @classmethod
    def _positive_sizes(cls, sizes: list[int]) -> list[int]:
        if any(size < 1 for size in sizes):
            raise ValueError("every preferred batch size must be at least 1")
        return sizes

    # Logs (service/logs.py).
    log_format: Literal["text", "json"] = Field(
        default="text", description="log lines as text or json"
    )
    access_log: bool = Field(
        default=False,
        description="log one line per request (model, rpc, code, duration, request id)",
    )
