"""`rnnserve build`, `rnnserve train` and `rnnserve export`: the model zoo from the command
line; `rnnserve import`: a user's own ONNX export into the repository. Torch is imported
only when one of the first three runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rnnserve.protocol.errors import UsageError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this package's subcommands to the `rnnserve` parser."""
    build = sub.add_parser("build", help="train, export and verify the model repository")
    build.add_argument("--out", type=Path, default=Path("models"), help="repository folder")
    build.add_argument(
        "--models",
        nargs="+",
        metavar="NAME",
        help="<task>-<cell>[-bi] names, e.g. sine-lstm tagger-gru-bi (default: the nine)",
    )
    build.add_argument("--runs", type=Path, default=Path("runs"), help="checkpoints and plots")
    build.add_argument("--skip-existing", action="store_true", help="leave present models alone")
    build.add_argument("--new-version", action="store_true", help="add a version, not version 1")
    _add_training_options(build)
    build.set_defaults(run=run_build)

    train = sub.add_parser("train", help="train one model: checkpoint and plots in runs/<name>/")
    train.add_argument("task", help="sine, tagger or seq2seq")
    train.add_argument("cell", help="rnn, lstm or gru")
    train.add_argument("--bidirectional", action="store_true", help="tagger only")
    train.add_argument("--runs", type=Path, default=Path("runs"))
    _add_training_options(train)
    train.set_defaults(run=run_train)

    export = sub.add_parser("export", help="export a checkpoint into the repository, verified")
    export.add_argument("checkpoint", type=Path, help="checkpoint.pt or its run folder")
    export.add_argument("--out", type=Path, default=Path("models"), help="repository folder")
    export.add_argument("--version", type=int, help="version number (default: the next free)")
    export.set_defaults(run=run_export)

    imported = sub.add_parser(
        "import",
        help="a recurrent model's own ONNX export into the repository, checked and described",
    )
    imported.add_argument("graph", type=Path, help="the .onnx file (torch.onnx.export's)")
    imported.add_argument("--name", required=True, help="the model's name in the repository")
    imported.add_argument("--version", type=int, help="version number (default: the next free)")
    imported.add_argument("--out", type=Path, default=Path("models"), help="repository folder")
    imported.add_argument(
        "--sidecar", type=Path, help="hints for what the graph does not say (default: "
        "model.json beside the graph, if there is one)",
    )  # fmt: skip
    imported.set_defaults(run=run_import)


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="default", help="default or tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, help="override the preset's epochs")
    parser.add_argument("--hidden", type=int, help="override the preset's hidden size")
    parser.add_argument("--layers", type=int, help="override the preset's layer count")


def _overrides(args: argparse.Namespace) -> dict[str, int | None]:
    return {"epochs": args.epochs, "hidden_size": args.hidden, "num_layers": args.layers}


def run_build(args: argparse.Namespace) -> int:
    from rnnserve.export.build import build_repository, summary_table
    from rnnserve.export.errors import VerificationError

    try:
        results = build_repository(
            args.out,
            args.models,
            args.preset,
            args.seed,
            overrides=_overrides(args),
            runs=args.runs,
            skip_existing=args.skip_existing,
            new_version=args.new_version,
            progress=True,
        )
    except VerificationError as error:
        print(f"rnnserve build: export refused: {error}", file=sys.stderr)
        return 1
    print(summary_table(results))
    return 0


def run_train(args: argparse.Namespace) -> int:
    from rnnserve.export.config import make_config
    from rnnserve.export.repository import ensure_writable
    from rnnserve.export.training import save_run, train_model

    config = make_config(
        args.task, args.cell, args.preset, args.seed, args.bidirectional, **_overrides(args)
    )
    run_dir = args.runs / config.name
    ensure_writable(run_dir)
    trained = train_model(config, progress=True)
    save_run(trained, run_dir)
    print(
        f"{config.name}: {trained.quality_name}={trained.quality:.4g} after "
        f"{trained.train_seconds:.1f} s; checkpoint and plots in {run_dir}"
    )
    return 0


def run_export(args: argparse.Namespace) -> int:
    from rnnserve.export.errors import VerificationError
    from rnnserve.export.exporter import export_version
    from rnnserve.export.repository import ensure_writable, next_version
    from rnnserve.export.training import load_run

    if args.version is not None and args.version < 1:
        raise UsageError(f"--version must be at least 1, got {args.version}")
    trained = load_run(args.checkpoint)
    ensure_writable(args.out)
    version = args.version or next_version(args.out, trained.config.name)
    try:
        result = export_version(trained, args.out, version)
    except VerificationError as error:
        print(f"rnnserve export: export refused: {error}", file=sys.stderr)
        return 1
    chunk = f"{result.chunk_error:.1e}" if result.chunk_error is not None else "n/a"
    print(f"{result.path}: parity error {result.parity_error:.1e}, chunk error {chunk}")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from rnnserve.export.errors import VerificationError
    from rnnserve.export.importer import describe_import, import_graph

    try:
        imported = import_graph(args.graph, args.out, args.name, args.version, args.sidecar)
    except VerificationError as error:
        print(f"rnnserve import: import refused: {error}", file=sys.stderr)
        return 1
    print(describe_import(imported))
    return 0
