"""`rnnserve <subcommand>`: each part of the product registers its own subcommands.

Registration imports only argparse-level code; a subcommand imports its heavy
dependencies (torch, onnxruntime, grpc) when it runs, so `rnnserve serve` never loads
torch and `rnnserve build` never loads the server. The bench is an extra: without it,
`rnnserve bench` is absent.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import metadata
from types import ModuleType
from typing import Any, NoReturn

from rnnserve import demo
from rnnserve.client import cli as client_cli
from rnnserve.export import cli as export_cli
from rnnserve.protocol.errors import UsageError
from rnnserve.service import cli as service_cli

# Each part's `cli` module registers its subcommands (docs/architecture.md, CLI registration).
PARTS: list[ModuleType] = [export_cli, service_cli, client_cli]
try:
    from rnnserve.bench import cli as bench_cli
except ModuleNotFoundError as missing:  # rnnserve[bench] not installed
    if missing.name != "rnnserve.bench":
        raise
else:
    PARTS.append(bench_cli)

# The distributions rnnserve is made of (the root pyproject.toml), all of one version.
DISTRIBUTIONS = (
    "rnnserve", "rnnserve-protocol", "rnnserve-model", "rnnserve-client", "rnnserve-server",
    "rnnserve-export", "rnnserve-bench",
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rnnserve", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (*PARTS, demo):
        module.register(sub)
    return parser


class _Version(argparse.Action):
    """`--version`: the installed parts' versions, read only when asked (reading the
    distributions' metadata takes a tenth of a second, which no other command should pay)."""

    def __init__(self, option_strings: Sequence[str], dest: str) -> None:
        super().__init__(
            option_strings, argparse.SUPPRESS, nargs=0, help="print each part's version and exit"
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> NoReturn:
        print(versions())
        parser.exit()


def versions() -> str:
    """One line per installed part: its distribution and version (the bench is an extra)."""
    lines = []
    for name in DISTRIBUTIONS:
        try:
            lines.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except UsageError as error:
        print(f"rnnserve {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
