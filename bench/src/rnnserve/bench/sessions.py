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

from rnnserve.bench import loadgen, probe, servers
from rnnserve.bench.options import Options
from rnnserve.bench.payloads import step_request_json
from rnnserve.bench.plots import bar_plot, line_plot
from rnnserve.bench.report import Figure, Metrics, ScenarioResult, environment
from rnnserve.bench.transport import probe_steps

SESSIONS = (1, 4, 16, 64, 256, 1024)
QUICK_SESSIONS = (1, 4)
WORKERS = 2  # several server processes on one port: the figure is read at 64 sessions
WORKERS_SESSIONS = 64
SHARED_STORES = ("owned", "redis")  # state stores several workers can share
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
    options: Options,
    *,
    batching: bool = False,
    coalesce_steps: bool = True,
    coalesce_max_delay_us: int = 0,
    workers: int = 1,
    state_store: str = "owned",
    cpu_affinity: str = "none",
    busy_poll_us: str = "auto",
) -> Iterator[servers.Running]:
    """rnnserve set up for sessions; several workers share their sessions through a
    redis-server of their own, with `state_store` (one worker keeps them in memory)."""
    settings = {
        **SERVER_SETTINGS,
        "batching": str(batching).lower(),
        "coalesce_steps": str(coalesce_steps).lower(),
        "coalesce_max_delay_us": str(coalesce_max_delay_us),
        "cpu_affinity": cpu_affinity,
        "busy_poll_us": busy_poll_us,
    }
    with contextlib.ExitStack() as stack:
        if workers > 1:
            redis_url = stack.enter_context(servers.redis_server(options.workdir))
            settings |= {
                "workers": str(workers),
                "state_store": state_store,
                "redis_url": redis_url,
            }
        yield stack.enter_context(servers.rnnserve(options.workdir, options.repository, settings))


def session_runs(
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
    figures: list[Figure] = []
    lines: dict[str, list[tuple[float, float]]] = {}  # the plot: (sessions, steps/s) each

    def measure(
        server: servers.Running, sessions: int, line: str, label: str, **params: object
    ) -> None:
        runs = session_runs(options, server, sessions, len(figures) * 100_000)
        figure = Figure(label, {"sessions": sessions, **params}, runs)
        figures.append(figure)
        lines.setdefault(line, []).append((sessions, figure.median["rps"]))

    for batching in (True, False):
        on = "on" if batching else "off"
        with session_server(options, batching=batching) as server:
            for sessions in counts:
                line = f"batching {on}, 1 worker"
                measure(
                    server,
                    sessions,
                    line,
                    f"{sessions} sessions, batching {on}",
                    batching=batching,
                    workers=1,
                )
    sessions = QUICK_WORKERS_SESSIONS if options.quick else WORKERS_SESSIONS
    for store in SHARED_STORES:
        with session_server(options, workers=WORKERS, state_store=store) as server:
            line = f"batching off, {WORKERS} workers, {store} store"
            measure(
                server,
                sessions,
                line,
                f"{sessions} sessions, {line}",
                batching=False,
                workers=WORKERS,
                store=store,
            )
    line_plot(
        options.out / "many_sessions.png",
        "Many sessions: one step per request",
        "concurrent sessions (one connection each)",
        "session-steps per second",
        lines,
        logx=True,
    )
    return ScenarioResult(
        name="many_sessions",
        title="4. Many sessions: session-steps per second",
        description=(
            f"k6, one virtual user per session of {options.model_name}, each on its own "
            "connection, one step per ModelInfer; `rps` counts successful session-steps. "
            f"The {WORKERS}-worker rows run `rnnserve serve --workers {WORKERS}` (SO_REUSEPORT) "
            "with a local redis-server and the owned state store (each state stays in the "
            "worker that steps it) or the redis store (every step in Redis); one worker "
            "keeps its sessions in memory."
        ),
        figures=figures,
        environment=environment(options.runs),
        command=options.command,
    )
