"""Scenario 13: what each guarantee costs a step, one at a time, in one run. 64 sessions of
one step per ModelInfer (k6, a connection per session, as in scenarios 4 and 8) against
rnnserve with none of the guarantees a client may ask for, then with each alone: step
offsets (every step carries `sequence_offset`: accounting, its answer kept for a replay,
the digest of its inputs), bearer tokens (every call authenticated and authorized, its
principal's sessions apart), the access log (a line per request); then all together.
What every step keeps whatever it asks (the budget, the in-flight gauges, the store's
reachability, the request metrics) is in the first row. A guarantee's cost is the server's
CPU per step beyond the first row's. The servers run side by side and each run measures
every setup in turn."""

from __future__ import annotations

import contextlib

from rnnserve.bench.options import Options
from rnnserve.bench.plots import bar_plot
from rnnserve.bench.report import Figure, Metrics, ScenarioResult, environment
from rnnserve.bench.security import Setup, many_sessions, server

SESSIONS, QUICK_SESSIONS = 64, 4
NONE = "none asked for"
SETUPS = (
    Setup(NONE),
    Setup("step offsets", offsets=True),
    Setup("bearer tokens", token=True),
    Setup("access log", access_log=True),
    Setup("all three", offsets=True, token=True, access_log=True),
)


def run(options: Options) -> ScenarioResult:
    sessions = QUICK_SESSIONS if options.quick else SESSIONS
    runs: dict[str, list[Metrics]] = {setup.name: [] for setup in SETUPS}
    with contextlib.ExitStack() as stack:
        running = [(setup, stack.enter_context(server(options, setup))) for setup in SETUPS]
        for run in range(options.runs):
            for index, (setup, serving) in enumerate(running):
                first = 1 + (index * options.runs + run) * 100_000  # fresh ids every time
                runs[setup.name].append(many_sessions(options, serving, setup, sessions, first))
    figures = {
        setup.name: Figure(
            f"{setup.name}, {sessions} sessions",
            {"setup": setup.name, "sessions": sessions},
            runs[setup.name],
        )
        for setup in SETUPS
    }
    cpu = {
        name: figure.median.get("server_cpu_us_per_request", 0.0)
        for name, figure in figures.items()
    }
    bar_plot(
        options.out / "guarantees.png",
        f"Guarantees: server CPU per step, {sessions} sessions",
        "µs of server CPU per step",
        {name: {"server CPU per step (µs)": value} for name, value in cpu.items()},
    )
    notes = [
        f"{name}: {cpu[name] - cpu[NONE]:+.0f} µs of server CPU per step beyond "
        f"{NONE!r} ({cpu[NONE]:.0f} µs); steps/s × "
        f"{figures[name].median['rps'] / figures[NONE].median['rps']:.3f}."
        for name in cpu
        if name != NONE
    ]
    return ScenarioResult(
        name="guarantees",
        title="13. Guarantees: what each costs a step",
        description=(
            f"{options.model_name} in sessions, one server per setup, plaintext: none of the "
            "guarantees a client may ask for; step offsets (every step carries "
            "`sequence_offset`); bearer tokens (`--auth-tokens`); the access log "
            "(`--access-log`); all three. k6, one connection per session, one step per "
            "ModelInfer; `server_cpu_us_per_request` is the server's CPU per step. The notes "
            "give each guarantee's cost as CPU per step beyond the first row."
        ),
        figures=list(figures.values()),
        notes=notes,
        environment=environment(options.runs),
        command=options.command,
    )
