"""Scenario 10: `--workers N` scaling. 64 and 256 sessions of one step per request (k6, a
connection per session, as in scenario 4) against rnnserve with 1, 2, 4 and 8 worker
processes on one port, several workers keeping their sessions with the owned state store
(a redis-server of their own records which worker owns each); one worker keeps them in
memory. The figure is read against the cores the machine has: on two cores a second
worker adds no core."""

from __future__ import annotations

import os

from rnnserve.bench.options import Options
from rnnserve.bench.plots import line_plot
from rnnserve.bench.report import Figure, ScenarioResult, environment
from rnnserve.bench.sessions import session_runs, session_server

WORKERS, QUICK_WORKERS = (1, 2, 4, 8), (1, 2)
SESSIONS, QUICK_SESSIONS = (64, 256), (4,)


def run(options: Options) -> ScenarioResult:
    counts = QUICK_WORKERS if options.quick else WORKERS
    figures: list[Figure] = []
    lines: dict[str, list[tuple[float, float]]] = {}
    for workers in counts:
        with session_server(options, workers=workers, state_store="owned") as server:
            for sessions in QUICK_SESSIONS if options.quick else SESSIONS:
                runs = session_runs(options, server, sessions, len(figures) * 100_000)
                store = "owned" if workers > 1 else "memory"
                figure = Figure(
                    f"{sessions} sessions, {workers} workers",
                    {"sessions": sessions, "workers": workers, "store": store},
                    runs,
                )
                figures.append(figure)
                lines.setdefault(f"{sessions} sessions", []).append((workers, figure.median["rps"]))
    line_plot(
        options.out / "workers.png",
        f"--workers N on {os.cpu_count()} cores: one step per request",
        "worker processes",
        "session-steps per second",
        lines,
        logx=True,
    )
    return ScenarioResult(
        name="workers",
        title="10. Workers: `--workers N` scaling",
        description=(
            f"k6, one connection per session of {options.model_name}, one step per ModelInfer, "
            "against `rnnserve serve --workers N` (SO_REUSEPORT; N > 1 with the owned state "
            "store over a local redis-server, one worker with its memory store); `rps` counts "
            f"session-steps. Measured on a machine of {os.cpu_count()} cores, shared with k6."
        ),
        figures=figures,
        environment=environment(options.runs),
        command=options.command,
    )
