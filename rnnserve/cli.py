"""`rnnserve <subcommand>`: each part of the product registers its own subcommands.

Registration imports only argparse-level code; a subcommand imports its heavy
dependencies (torch, onnxruntime, grpc) when it runs, so `rnnserve serve` never loads
torch and `rnnserve build` never loads the server.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rnnserve import demo
from rnnserve.bench import cli as bench_cli
from rnnserve.client import cli as client_cli
from rnnserve.errors import UsageError
from rnnserve.export import cli as export_cli
from rnnserve.service import cli as service_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rnnserve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (export_cli, service_cli, client_cli, bench_cli, demo):
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
