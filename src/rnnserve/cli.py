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
from types import ModuleType

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rnnserve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (*PARTS, demo):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except UsageError as error:
        print(f"rnnserve {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
