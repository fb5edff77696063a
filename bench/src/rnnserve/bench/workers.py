"""Scenario 10: `--workers N` scaling against the floor of as many processes. 64 sessions of
one step per request (k6, a connection per session, as in scenario 4) against rnnserve with
1, 2, 4 and 8 worker processes on one port (and as many as `--workers auto` starts, one per
CPU the process may use, where that is more), and against the echo floor with as many
processes on one port (`echo --procs N`). Several workers keep their sessions with the owned
state store (a redis-server of their own records which worker owns each); one worker keeps
them in memory. `--workers auto` is the production setting: the table says what each added
core gives, beside what it gives the floor."""

from __future__ import annotations

import contextlib
import os

from rnnserve.bench import servers
from rnnserve.bench.options import Options
from rnnserve.bench.plots import line_plot
from rnnserve.bench.report import Figure, ScenarioResult, environment
from rnnserve.bench.sessions import session_runs, session_server
from rnnserve.service import affinity

SESSIONS, QUICK_SESSIONS = 64, 4


def worker_counts() -> list[int]:
    """1, 2, 4 and 8, and as many as `--workers auto` starts where that is more: the issue's
    table, whatever the machine (on fewer cores, the counts beyond them show what
    oversubscribing costs)."""
    return sorted({1, 2, 4, 8, affinity.whole_cpus()})


def run(options: Options) -> ScenarioResult:
    sessions = QUICK_SESSIONS if options.quick else SESSIONS
    figures: list[Figure] = []
    lines: dict[str, list[tuple[float, float]]] = {}
    notes: list[str] = []
    for workers in worker_counts():
        measured: dict[str, Figure] = {}
        for server in ("echo", "rnnserve"):
            with contextlib.ExitStack() as stack:
                running = stack.enter_context(
                    servers.echo_server(options.workdir, procs=workers)
                    if server == "echo"
                    else session_server(options, workers=workers, state_store="owned")
                )
                runs = session_runs(options, running, sessions, len(figures) * 100_000)
            store = "" if server == "echo" else ", owned store" if workers > 1 else ", memory store"
            figure = measured[server] = Figure(
                f"{server}, {workers} {'processes' if server == 'echo' else 'workers'}{store}",
                {"server": server, "sessions": sessions, "workers": workers},
                runs,
            )
            figures.append(figure)
            lines.setdefault(server, []).append((workers, figure.median["rps"]))
        ratio = measured["rnnserve"].median["rps"] / measured["echo"].median["rps"]
        notes.append(
            f"{workers} {'worker' if workers == 1 else 'workers'}: rnnserve's steps/s over the "
            f"floor's requests/s with as many processes: {ratio:.2f}×."
        )
    line_plot(
        options.out / "workers.png",
        f"--workers N on {os.cpu_count()} cores: one step per request, {sessions} sessions",
        "processes (workers)",
        "session-steps (requests) per second",
        lines,
        logx=True,
    )
    return ScenarioResult(
        name="workers",
        title="10. Workers: `--workers N` scaling, against the floor of as many processes",
        description=(
            f"k6, {sessions} connections with a session of {options.model_name} each, one step "
            "per ModelInfer, against `rnnserve serve --workers N` (SO_REUSEPORT; N > 1 with the "
            "owned state store over a local redis-server, one worker with its memory store) "
            "and against the echo floor run as N processes on one port (`echo --procs N`); "
            f"`rps` counts session-steps (the floor's requests). Measured on a machine of "
            f"{os.cpu_count()} cores, shared with k6."
        ),
        figures=figures,
        notes=notes,
        environment=environment(options.runs),
        command=options.command,
    )
