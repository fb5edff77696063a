"""`rnnserve serve`: load the model repository and serve it over gRPC and HTTP/REST.

Every flag overrides the Settings field of the same name; flags left out fall back to
the environment (RNNSERVE_*) and then to the defaults in service/settings.py.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from rnnserve.protocol.errors import UsageError

if TYPE_CHECKING:
    from rnnserve.service.settings import Settings

# (Settings field, help). Values go to Settings as typed text and pydantic checks them,
# so the limits and types live in one place: service/settings.py.
VALUE_FLAGS = [
    ("model_repository", "folder holding <name>/<version>/ model folders"),
    ("host", "address to listen on"),
    ("grpc_port", "gRPC port"),
    ("http_port", "HTTP/REST port (0 disables REST)"),
    ("metrics_port", "Prometheus /metrics port (0 disables it)"),
    ("metrics_host", "address /metrics listens on (default: --host), e.g. a private one"),
    ("workers", "server processes sharing the port"),
    ("worker_restart_limit", "worker deaths within --worker-restart-window-s that stop the server"),
    ("worker_restart_window_s", "seconds over which worker deaths are counted"),
    ("grace_period_s", "seconds to finish requests in flight after SIGTERM"),
    ("intra_op_threads", "ONNX Runtime intra-op threads (0: ORT chooses)"),
    ("inter_op_threads", "ONNX Runtime inter-op threads (0: ORT chooses)"),
    ("compute_threads", "threads running models off the event loop"),
    ("inline_max_bytes", "largest request, in input bytes, run on the event loop (0: none)"),
    ("max_batch_size", "largest batch accepted"),
    ("max_sequence_length", "longest sequence accepted"),
    ("max_message_bytes", "largest gRPC message accepted or sent"),
    ("max_request_elements", "most elements one request may imply (inputs, outputs, RNN work)"),
    ("max_inflight_bytes", "most bytes the requests in flight of a server process may take"),
    ("session_idle_timeout_s", "seconds before an idle sequence's state is dropped"),
    ("max_sessions", "most sequences holding state at once"),
    ("max_sessions_per_principal", "most sequences one principal (client) may hold at once"),
    ("state_store", "where sequence state lives: memory, redis or owned"),
    (
        "redis_url",
        "Redis for --state-store redis or owned: redis://host:port/0, or a cluster: "
        "redis+cluster://node:port",
    ),
    ("state_store_timeout_s", "seconds a call to Redis may take before it fails (UNAVAILABLE)"),
    ("state_durability", "none, or replica: a step is on a Redis replica before it is answered"),
    (
        "state_durability_timeout_s",
        "replica durability: seconds a write waits for a replica (on top of the timeout)",
    ),
    ("batch_max_size", "most sequence steps batched into one ORT run"),
    ("batch_max_queue_delay_us", "longest a step waits for others to batch with"),
    ("log_format", "log lines as text or json"),
    ("model_control_mode", "none, poll (follow the repository) or explicit (load/unload RPCs)"),
    ("repository_poll_s", "poll mode: seconds between scans of the repository"),
    ("tls_cert", "PEM certificate chain: serve TLS on the gRPC and REST ports (with --tls-key)"),
    ("tls_key", "PEM private key of --tls-cert"),
    ("tls_client_ca", "PEM CA: require client certificates it signed (mutual TLS)"),
    ("auth_tokens", "token file: a line per principal (name, SHA-256 of its token, roles)"),
]
LIST_FLAGS = [
    ("providers", "comma-separated ONNX Runtime execution providers, in preference"),
    ("load_model", "explicit mode: comma-separated models loaded at start ('*': all)"),
]
BOOL_FLAGS = [
    ("batching", "batch steps of different sequences into one ORT run"),
    ("access_log", "log one line per request (model, rpc, code, duration, request id)"),
    ("strict_readiness", "not ready while any model version failed to load"),
    ("exit_on_error", "stop at start if any model version failed to load"),
    ("reflection", "gRPC server reflection (on by default)"),
]


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("serve", help="serve the model repository over gRPC and HTTP/REST")
    for field, text in VALUE_FLAGS:
        parser.add_argument(_flag(field), dest=field, default=None, help=text)
    for field, text in LIST_FLAGS:
        parser.add_argument(
            _flag(field), dest=field, default=None, type=lambda s: s.split(","), help=text
        )
    for field, text in BOOL_FLAGS:
        parser.add_argument(
            _flag(field),
            dest=field,
            default=None,
            action=argparse.BooleanOptionalAction,
            help=text,
        )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    parser.set_defaults(run=run)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the flags that were given."""
    from pydantic import ValidationError

    from rnnserve.service.settings import Settings

    fields = [field for field, _ in VALUE_FLAGS + LIST_FLAGS + BOOL_FLAGS]
    overrides = {f: getattr(args, f) for f in fields if getattr(args, f) is not None}
    try:
        return Settings(**overrides)
    except ValidationError as error:
        problem = error.errors()[0]
        where = _flag(str(problem["loc"][0])) if problem["loc"] else "settings"
        raise UsageError(f"{where}: {problem['msg']}") from None


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def run(args: argparse.Namespace) -> int:
    import asyncio

    from rnnserve.service import logs
    from rnnserve.service.auth import Authenticator
    from rnnserve.service.server import serve
    from rnnserve.service.tls import load_tls

    if args.log_level.lower() not in LOG_LEVELS:
        raise UsageError(f"--log-level {args.log_level}: expected one of {', '.join(LOG_LEVELS)}")
    settings = settings_from_args(args)
    logs.configure(args.log_level, settings.log_format, settings.access_log)
    _check_models(settings)
    # Read here too, before any worker starts: a bad file stops the server with one line.
    load_tls(settings)
    Authenticator.from_settings(settings)
    _check_port_free(settings)
    if settings.workers > 1:
        return _serve_workers(settings, args.log_level)
    asyncio.run(serve(settings))
    return 0


def _check_port_free(settings: Settings) -> None:
    """The gRPC and REST ports are free: bound here alone first (UsageError if one cannot
    be), before the front ends bind them; workers share them with SO_REUSEPORT, which would
    let them join any server listening there."""
    import socket

    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    for field in ("grpc_port", "http_port"):
        port = getattr(settings, field)
        if not port:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as they bind
            try:
                probe.bind((settings.host, port))
            except OSError as error:
                raise UsageError(
                    f"{_flag(field)} {port}: cannot listen on {settings.host}:{port}: "
                    f"{error.strerror}"
                ) from None


def _check_models(settings: Settings) -> None:
    """Start-up mistakes about the repository and model control, each one line."""
    from rnnserve.service.dataplane.models import ALL_MODELS
    from rnnserve.service.repository import Repository

    repository = Repository(settings)
    repository.check_root()
    if settings.load_model and settings.model_control_mode != "explicit":
        raise UsageError(
            "--load-model names the models to load at start in explicit model control: "
            "add --model-control-mode explicit (the other modes load every model)"
        )
    unknown = set(settings.load_model) - {ALL_MODELS, *repository.folder_names()}
    if unknown:
        raise UsageError(
            f"--load-model: no folder {', '.join(sorted(unknown))} in {settings.model_repository}"
        )
    if settings.workers > 1 and settings.model_control_mode == "explicit":
        raise UsageError(
            f"--workers {settings.workers} with --model-control-mode explicit: a load or "
            "unload request reaches one worker only; use --model-control-mode poll, whose "
            "every worker follows the repository"
        )


def _serve_workers(settings: Settings, log_level: str) -> int:
    from rnnserve.service.workers import serve_workers

    if settings.state_store == "memory":
        # A client that reconnects may land on another worker: its session's state must be
        # reachable from there.
        raise UsageError(
            f"--workers {settings.workers} needs sequence state every worker can reach: "
            "set --state-store owned (or RNNSERVE_STATE_STORE=owned: states stay in the "
            "worker that steps them and move through Redis when needed) or redis (every step "
            "in Redis), and --redis-url; the memory store keeps a session in one worker"
        )
    return serve_workers(settings, log_level)
