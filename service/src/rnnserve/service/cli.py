"""`rnnserve serve`: load the model repository and serve it over gRPC and HTTP/REST.

Every flag overrides the Settings field of the same name; flags left out fall back to
the environment (RNNSERVE_*) and then to the defaults in service/settings.py, whose field
descriptions are the flags' help.
"""

from __future__ import annotations

import argparse
import re
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rnnserve.protocol.errors import UsageError

if TYPE_CHECKING:
    from pydantic.fields import FieldInfo

    from rnnserve.service.settings import Settings

# Settings fields by how their flag reads its value. Values go to Settings as typed text and
# pydantic checks them, so the limits, types and help live in one place: settings.py.
VALUE_FLAGS = (
    "model_repository", "host", "grpc_port", "grpc_listeners", "http_port", "metrics_port",
    "metrics_host", "workers", "cpu_affinity", "busy_poll_us", "worker_restart_limit",
    "worker_restart_window_s",
    "grace_period_s", "event_loop",
    "intra_op_threads", "inter_op_threads", "gpu_device_id", "gpu_mem_limit",
    "arena_extend_strategy", "cudnn_conv_algo_search", "instances_per_device", "device_state",
    "compute_threads", "inline_max_bytes",
    "max_batch_size", "max_sequence_length", "max_message_bytes", "max_request_elements",
    "max_inflight_bytes", "request_body_timeout_s", "session_idle_timeout_s", "max_sessions",
    "max_sessions_per_principal", "state_store", "redis_url", "state_store_timeout_s",
    "state_durability", "state_durability_timeout_s", "coalesce_max_delay_us", "batch_max_size",
    "batch_max_queue_delay_us", "dynamic_batch_max_size", "dynamic_batch_max_queue_delay_us",
    "log_format", "model_control_mode", "repository_poll_s",
    "tls_cert", "tls_key", "tls_client_ca", "auth_tokens",
)  # fmt: skip
LIST_FLAGS = ("providers", "load_model", "dynamic_batch_preferred_sizes")  # comma-separated
BOOL_FLAGS = (
    "coalesce_steps", "batching", "dynamic_batching", "access_log", "strict_readiness",
    "exit_on_error", "reflection", "allow_unknown_parameters",
)  # fmt: skip
FIELD_NAME = re.compile(r"`(\w+)`")  # another field, named in a description


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "serve",
        help="serve the model repository over gRPC and HTTP/REST",
        description="Serve the model repository over gRPC and HTTP/REST.",
        epilog="Each flag overrides the environment variable of its name (--grpc-port: "
        "RNNSERVE_GRPC_PORT; lists as JSON there), which overrides the default.",
        add_help=False,
        formatter_class=_Formatter,
    )
    flags: dict[str, argparse.Action] = {}
    parser.add_argument("-h", "--help", action=_Help, flags=flags)
    for field in VALUE_FLAGS:
        flags[field] = parser.add_argument(_flag(field), dest=field, default=None)
    for field in LIST_FLAGS:
        flags[field] = parser.add_argument(
            _flag(field), dest=field, default=None, type=lambda s: s.split(",")
        )
    for field in BOOL_FLAGS:
        flags[field] = parser.add_argument(
            _flag(field), dest=field, default=None, action=argparse.BooleanOptionalAction
        )
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    parser.set_defaults(run=run)


class _Help(argparse.Action):
    """`-h`, `--help`: the flags' help is read from the Settings fields' descriptions only
    now, since building the parser must not import pydantic: every `rnnserve` command
    builds it."""

    def __init__(
        self, option_strings: Sequence[str], dest: str, flags: dict[str, argparse.Action]
    ) -> None:
        super().__init__(
            option_strings, argparse.SUPPRESS, nargs=0, help="show this help message and exit"
        )
        self._flags = flags

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        from rnnserve.service.settings import Settings

        for field, action in self._flags.items():
            action.help = _help_text(Settings.model_fields[field], list_flag=field in LIST_FLAGS)
        parser.print_help()
        parser.exit()


class _Formatter(argparse.HelpFormatter):
    """Wraps help between words only: a flag named in a help text never breaks at its
    hyphens."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(text, width, break_on_hyphens=False)


def _help_text(info: FieldInfo, list_flag: bool) -> str:
    """A field's description, other fields named as their flags, and its default."""
    text = FIELD_NAME.sub(lambda name: _flag(name[1]), info.description or "")
    if list_flag:
        text += ", comma-separated"
    default = info.default
    if isinstance(default, bool):
        default = "on" if default else "off"
    elif isinstance(default, list):
        default = ",".join(default)
    if default not in (None, ""):
        text += f" (default: {default})"
    # argparse formats help with %: a literal % must be doubled.
    return text.replace("%", "%%")


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the flags that were given."""
    from pydantic import ValidationError

    from rnnserve.service.settings import Settings

    fields = VALUE_FLAGS + LIST_FLAGS + BOOL_FLAGS
    overrides = {f: getattr(args, f) for f in fields if getattr(args, f) is not None}
    try:
        return Settings(**overrides)
    except ValidationError as error:
        problem = error.errors()[0]
        where = _flag(str(problem["loc"][0])) if problem["loc"] else "settings"
        raise UsageError(f"{where}: {problem['msg']}") from None


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def run(args: argparse.Namespace) -> int:
    from rnnserve.service import logs
    from rnnserve.service.auth import Authenticator
    from rnnserve.service.server import serve_process
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
    serve_process(settings)  # ends the process once the server has stopped


def _check_port_free(settings: Settings) -> None:
    """The gRPC and REST ports are free: bound here alone first (UsageError if one cannot
    be), before the front ends bind them; workers and a process's gRPC listeners share them
    with SO_REUSEPORT, which would let them join any server listening there."""
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
