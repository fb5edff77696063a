"""`rnnserve serve`: load the model repository and serve it over gRPC.

Every flag overrides the Settings field of the same name; flags left out fall back to
the environment (RNNSERVE_*) and then to the defaults in service/settings.py.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from rnnserve.errors import UsageError

if TYPE_CHECKING:
    from rnnserve.service.settings import Settings

# (Settings field, help). Values go to Settings as typed text and pydantic checks them,
# so the limits and types live in one place: service/settings.py.
VALUE_FLAGS = [
    ("model_repository", "folder holding <name>/<version>/ model folders"),
    ("host", "address to listen on"),
    ("grpc_port", "gRPC port"),
    ("metrics_port", "Prometheus /metrics port (0 disables it)"),
    ("metrics_host", "address /metrics listens on (default: --host), e.g. a private one"),
    ("workers", "server processes sharing the port"),
    ("grace_period_s", "seconds to finish requests in flight after SIGTERM"),
    ("intra_op_threads", "ONNX Runtime intra-op threads (0: ORT chooses)"),
    ("inter_op_threads", "ONNX Runtime inter-op threads (0: ORT chooses)"),
    ("compute_threads", "threads running models off the event loop"),
    ("inline_max_bytes", "largest request, in input bytes, run on the event loop (0: none)"),
    ("max_batch_size", "largest batch accepted"),
    ("max_sequence_length", "longest sequence accepted"),
    ("max_message_bytes", "largest gRPC message accepted or sent"),
    ("session_idle_timeout_s", "seconds before an idle sequence's state is dropped"),
    ("max_sessions", "most sequences holding state at once"),
    ("max_sessions_per_principal", "most sequences one principal (client) may hold at once"),
    ("state_store", "where sequence state lives: memory, redis or owned"),
    ("redis_url", "redis URL for --state-store redis or owned"),
    ("batch_max_size", "most sequence steps batched into one ORT run"),
    ("batch_max_queue_delay_us", "longest a step waits for others to batch with"),
    ("tls_cert", "PEM certificate chain: serve TLS (with --tls-key)"),
    ("tls_key", "PEM private key of --tls-cert"),
    ("tls_client_ca", "PEM CA: require client certificates it signed (mutual TLS)"),
    ("auth_tokens", "token file: a line per principal (name, SHA-256 of its token, roles)"),
]
LIST_FLAGS = [("providers", "comma-separated ONNX Runtime execution providers, in preference")]
BOOL_FLAGS = [
    ("batching", "batch steps of different sequences into one ORT run"),
    ("reflection", "gRPC server reflection (on by default)"),
]


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("serve", help="serve the model repository over gRPC")
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


def run(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from rnnserve.service.server import serve

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from rnnserve.service.auth import Authenticator
    from rnnserve.service.tls import load_tls

    settings = settings_from_args(args)
    if not settings.model_repository.is_dir():
        raise UsageError(f"--model-repository: {settings.model_repository} is not a folder")
    # Read here too, before any worker starts: a bad file stops the server with one line.
    load_tls(settings)
    Authenticator.from_settings(settings)
    if settings.workers > 1:
        return _serve_workers(settings, args.log_level)
    asyncio.run(serve(settings))
    return 0


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
