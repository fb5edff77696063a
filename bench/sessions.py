"""Scenarios 3 and 4, against rnnserve itself (a subprocess on free ports), driving the
LSTM sine model in stateful sessions (Triton's sequence parameters).

3. One session: step latency through ModelInfer and through ModelStreamInfer, set beside
   the same probe against the echo floor in the same run.
4. Many sessions: k6 with one connection per session and one step per request, at rising
   session counts, with batching across sessions on and off, and at 64 sessions with
   several server processes on one port.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from bench import loadgen, probe, servers
from bench.options import Options
from bench.payloads import step_request_json
from bench.plots import bar_plot, line_plot
from bench.report import Figure, Metrics, ScenarioResult, environment
from bench.transport import probe_steps

SESSIONS = (1, 4, 16, 64, 256, 1024)
QUICK_SESSIONS = (1, 4)
WORKERS = 2  # several server processes on one port: the figure is read at 64 sessions
WORKERS_SESSIONS = 64
QUICK_WORKERS_SESSIONS = 4
# Sessions must outlive the whole benchmark, and the largest figure must fit.
SERVER_SETTINGS = {"session_idle_timeout_s": "3600", "max_sessions": "200000"}


def run_one_session(options: Options) -> ScenarioResult:
    steps = probe_steps(options)
    probes = (("ModelInfer", probe.unary_steps), ("ModelStreamInfer", probe.stream_steps))
    figures = []
    with servers.echo_server(options.workdir) as echo:
        for rpc, measure in probes:
            runs = [
                measure(echo.target, options.model_name, steps, steps // 10, 0)
                for _ in range(options.runs)
            ]
            figures.append(Figure(f"echo floor {rpc}", {"server": "echo", "rpc": rpc}, runs))
    with servers.rnnserve(options.workdir, options.repository, SERVER_SETTINGS) as server:
        for index, (rpc, measure) in enumerate(probes):
            runs = [
                measure(
                    server.target, options.model_name, steps, steps // 10, 1 + index * 100 + run
                )
                for run in range(options.runs)
            ]
            figures.append(Figure(f"rnnserve {rpc}", {"server": "rnnserve", "rpc": rpc}, runs))
    bar_plot(
        options.out / "one_session.png",
        "One session: step latency",
        "milliseconds",
        {f.label: {"p50": f.median["p50_ms"], "p99": f.median["p99_ms"]} for f in figures},
    )
    return ScenarioResult(
        name="one_session",
        title="3. One session: step latency",
        description=(
            f"One session of {options.model_name}, one step in flight, timed by a synchronous "
            "Python gRPC client; the echo floor is probed the same way in the same run. "
            "The first step starts the sequence, later steps carry only `sequence_id`."
        ),
        figures=figures,
        environment=environment(options.runs),
        command=options.command,
    )


@contextlib.contextmanager
def session_server(
    options: Options, *, batching: bool = False, workers: int = 1
) -> Iterator[servers.Running]:
    """rnnserve set up for sessions; several workers share their sessions' state through a
    redis-server of their own."""
    settings = {**SERVER_SETTINGS, "batching": str(batching).lower()}
    with contextlib.ExitStack() as stack:
        if workers > 1:
            redis_url = stack.enter_context(servers.redis_server(options.workdir))
            settings |= {"workers": str(workers), "state_store": "redis", "redis_url": redis_url}
        yield stack.enter_context(servers.rnnserve(options.workdir, options.repository, settings))


def _session_runs(
    options: Options, server: servers.Running, sessions: int, first_id: int
) -> list[Metrics]:
    """k6 runs of `sessions` sessions, one per connection, one step per request; each run's
    sequence ids start above `first_id` + a multiple of 10,000, fresh for every run."""
    return [
        loadgen.run(
            loadgen.Load(
                server.target,
                step_request_json(options.model_name),
                sessions,
                duration_s=options.duration_s,
                warmup_s=options.warmup_s,
                sessions=True,
                server_pid=server.pid,
                sequence_base=first_id + run * 10_000,
            )
        )
        for run in range(options.runs)
    ]


def run_many_sessions(options: Options) -> ScenarioResult:
    counts = QUICK_SESSIONS if options.quick else SESSIONS
    figures = []
    for batching in (True, False):
        with session_server(options, batching=batching) as server:
            for sessions in counts:
                runs = _session_runs(options, server, sessions, len(figures) * 100_000)
                figures.append(
                    Figure(
                        f"{sessions} sessions, batching {'on' if batching else 'off'}",
                        {"sessions": sessions, "batching": batching, "workers": 1},
                        runs,
                    )
                )
    sessions = QUICK_WORKERS_SESSIONS if options.quick else WORKERS_SESSIONS
    with session_server(options, workers=WORKERS) as server:
        runs = _session_runs(options, server, sessions, len(figures) * 100_000)
    figures.append(
        Figure(
            f"{sessions} sessions, batching off, {WORKERS} workers",
            {"sessions": sessions, "batching": False, "workers": WORKERS},
            runs,
        )
    )
    line_plot(
        options.out / "many_sessions.png",
        "Many sessions: one step per request",
        "concurrent sessions (one connection each)",
        "session-steps per second",
        {
            f"batching {'on' if on else 'off'}, {workers} worker{'s' * (workers > 1)}": [
                (f.params["sessions"], f.median["rps"])
                for f in figures
                if f.params["batching"] == on and f.params["workers"] == workers
            ]
            for on, workers in ((True, 1), (False, 1), (False, WORKERS))
        },
        logx=True,
    )
    return ScenarioResult(
        name="many_sessions",
        title="4. Many sessions: session-steps per second",
        description=(
            f"k6, one virtual user per session of {options.model_name}, each on its own "
            "connection, one step per ModelInfer; `rps` counts successful session-steps. "
            f"The {WORKERS}-worker row runs `rnnserve serve --workers {WORKERS}` (SO_REUSEPORT) "
            "with the redis state store on a local redis-server, the memory store otherwise."
        ),
        figures=figures,
        environment=environment(options.runs),
        command=options.command,
    )
