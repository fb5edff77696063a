"""`rnnserve bench`: measure floors and the server, write docs/benchmarks/."""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path
from typing import cast

from rnnserve.protocol.errors import UsageError

SCENARIOS = (
    "compute", "transport", "one_session", "many_sessions", "memory", "multi_session",
    "perf_analyzer", "security", "streams", "workers", "soak", "cluster", "guarantees", "gpu",
    "dynamic_batching",
)  # fmt: skip


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this package's subcommands to the `rnnserve` parser."""
    parser = sub.add_parser("bench", help="run the benchmarks and write reports")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny models, short runs: checks the harness, not the figures",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SCENARIOS,
        metavar="NAME",
        help=f"scenarios to run (default all but gpu): {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("docs/benchmarks"),
        help="folder for JSON, markdown and plots (default docs/benchmarks)",
    )
    parser.add_argument(
        "--model-repository",
        type=Path,
        default=Path("models"),
        help="models to time (default models/; built when missing)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of the scenarios: sample the server with perf under the goal loads "
        "and write profile.md",
    )
    parser.add_argument(
        "--soak",
        action="store_true",
        help="only the soak: 200 sequences stepped at once, every answer checked, resident "
        "memory watched (same as --only soak)",
    )
    parser.add_argument(
        "--soak-seconds", type=float, default=60.0, help="length of the soak (default 60)"
    )
    parser.add_argument(
        "--gpu",
        action="store_true",
        help="only the GPU scenario: steps/s and p50 on the CPU and CUDA providers, "
        "device-resident state on and off, in process (same as --only gpu)",
    )
    parser.add_argument("--runs", type=int, help="repetitions per figure (default 3; 1 quick)")
    parser.add_argument("--duration", type=float, help="seconds of load per figure (default 10)")
    parser.set_defaults(run=run)


def _selected(args: argparse.Namespace) -> list[str]:
    """The scenarios to run: those --only names, or all but the GPU's (--gpu: that one)."""
    if args.profile:
        return []
    if args.soak:
        return ["soak"]
    if args.gpu:
        return ["gpu"]
    return cast(list[str], args.only) or [name for name in SCENARIOS if name != "gpu"]


def _repository(args: argparse.Namespace, workdir: Path) -> Path:
    """The given repository when it holds the sine models; else they are built: tiny ones
    in scratch space for --quick, default ones into the given folder."""
    from rnnserve.bench.compute import SINE_MODELS

    if (args.model_repository / "sine-lstm").exists():
        return cast(Path, args.model_repository)  # Any: the --model-repository Path
    try:
        from rnnserve.export.build import build_repository
    except ImportError as error:
        raise UsageError(
            f"no models at {args.model_repository} and no exporter: {error}"
        ) from error
    root = workdir / "models" if args.quick else args.model_repository
    print(f"building {', '.join(SINE_MODELS)} into {root}", file=sys.stderr)
    build_repository(root, names=list(SINE_MODELS), preset="tiny" if args.quick else "default")
    return root


def run(args: argparse.Namespace) -> int:
    from rnnserve.bench import (
        cluster,
        compute,
        dynamic_batching,
        goals,
        gpu,
        guarantees,
        memory,
        multi_session,
        perf_analyzer,
        profile,
        report,
        security,
        sessions,
        soak,
        streams,
        transport,
        workers,
    )
    from rnnserve.bench.options import Options

    runners = {
        "compute": compute.run,
        "transport": transport.run,
        "one_session": sessions.run_one_session,
        "many_sessions": sessions.run_many_sessions,
        "memory": memory.run,
        "multi_session": multi_session.run,
        "perf_analyzer": perf_analyzer.run,
        "security": security.run,
        "streams": streams.run,
        "workers": workers.run,
        "soak": soak.run,
        "cluster": cluster.run,
        "guarantees": guarantees.run,
        "gpu": gpu.run,
        "dynamic_batching": dynamic_batching.run,
    }
    if args.runs is not None and args.runs < 1:
        raise UsageError("--runs must be at least 1")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rnnserve-bench-") as scratch:
        workdir = Path(scratch)
        selected = _selected(args)
        # Only the transport floor runs without models.
        needs_models = args.profile or any(name != "transport" for name in selected)
        options = Options(
            out=args.out,
            workdir=workdir,
            repository=_repository(args, workdir) if needs_models else args.model_repository,
            runs=args.runs or (1 if args.quick else 3),
            quick=args.quick,
            duration_s=args.duration or (1.0 if args.quick else 10.0),
            warmup_s=1.0 if args.quick else 2.0,
            command=shlex.join(["rnnserve", *sys.argv[1:]]),
            soak_s=args.soak_seconds,
        )
        if args.profile:
            print(f"wrote {profile.run(options)}", file=sys.stderr)
            return 0
        for name in selected:
            print(f"bench: {name}", file=sys.stderr)
            report.write_scenario(args.out, runners[name](options))
    results = report.read_scenarios(args.out)
    page = report.render_markdown(args.out, results, goals.evaluate(results))
    (args.out / "README.md").write_text(page)
    print(page)
    return 0
