"""Scenario 6: multi-session requests. Each ModelInfer carries one step for each of `ROWS`
sessions (control tensors `sequence_id` and, on its first request, `sequence_start`), from
`CLIENTS` k6 clients on their own connections, each client stepping its own sessions; the
figure is session-steps per second, read against the transport floor's requests per second.
"""

from __future__ import annotations

from rnnserve.bench import loadgen, servers
from rnnserve.bench.options import Options
from rnnserve.bench.payloads import rows_request_json
from rnnserve.bench.plots import bar_plot
from rnnserve.bench.report import Figure, Metrics, ScenarioResult, environment
from rnnserve.bench.sessions import WORKERS, session_server

ROWS, CLIENTS = 64, 16
QUICK_ROWS, QUICK_CLIENTS = 8, 2


def _runs(options: Options, server: servers.Running, rows: int, clients: int) -> list[Metrics]:
    return [
        loadgen.run(
            loadgen.Load(
                server.target,
                rows_request_json(options.model_name, rows),
                clients,
                duration_s=options.duration_s,
                warmup_s=options.warmup_s,
                sessions=True,
                rows=rows,
                server_pid=server.pid,
                sequence_base=1 + run * clients * rows,
            )
        )
        for run in range(options.runs)
    ]


def run(options: Options) -> ScenarioResult:
    rows, clients = (QUICK_ROWS, QUICK_CLIENTS) if options.quick else (ROWS, CLIENTS)
    figures = []
    for batching, workers in ((True, 1), (False, 1), (False, WORKERS)):
        with session_server(options, batching=batching, workers=workers) as server:
            runs = _runs(options, server, rows, clients)
        name = f"batching {'on' if batching else 'off'}" + (
            f", {workers} workers, owned store" if workers > 1 else ""
        )
        figures.append(
            Figure(
                f"{rows} rows x {clients} clients, {name}",
                {"rows": rows, "clients": clients, "batching": batching, "workers": workers},
                runs,
            )
        )
    bar_plot(
        options.out / "multi_session.png",
        "Multi-session requests: session-steps per second",
        "session-steps per second",
        {f.label: {"session-steps/s": f.median["session_steps_per_s"]} for f in figures},
    )
    return ScenarioResult(
        name="multi_session",
        title="6. Multi-session requests: one step of many sessions per request",
        description=(
            f"k6, {clients} clients each on its own connection and each stepping its own "
            f"{rows} sessions of {options.model_name} with one ModelInfer of {rows} rows "
            "(control tensors `sequence_id` UINT64 and, on a client's first request, "
            "`sequence_start` BOOL). `rps` counts requests, `session_steps_per_s` the rows "
            "that stepped; `failed_rows` those whose session could not."
        ),
        figures=figures,
        environment=environment(options.runs),
        command=options.command,
    )
