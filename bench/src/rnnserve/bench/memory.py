"""Scenario 5: resident memory of rnnserve holding idle sessions of the issue's goal model,
an LSTM sine model of 2 layers x 64 hidden units, and bytes per session against the raw
bytes of its state tensors. Sessions are started by multi-session requests, `FILL_ROWS` new
sessions each, so that 100,000 take seconds, not minutes."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

from rnnserve.bench import loadgen, procs, servers
from rnnserve.bench.options import Options
from rnnserve.bench.payloads import rows_request_json
from rnnserve.bench.plots import line_plot
from rnnserve.bench.report import Figure, ScenarioResult, environment
from rnnserve.bench.sessions import SERVER_SETTINGS
from rnnserve.model.folder import read_version
from rnnserve.protocol.errors import UsageError

COUNTS = (0, 10_000, 100_000)
QUICK_COUNTS = (0, 200)
FILL_CLIENTS = 8
FILL_ROWS = 100  # sessions started per request; divides every count
GOAL_SIZES = {"num_layers": 2, "hidden_size": 64}


def goal_repository(options: Options) -> Path:
    """The goal model, built into scratch space with the tiny preset's brief training:
    memory depends on the sizes of its state, not on how well it learned."""
    try:
        from rnnserve.export.build import build_repository
    except ImportError as error:
        raise UsageError(
            f"the memory scenario builds its model and needs the exporter: {error}"
        ) from error
    root = options.workdir / "goal-models"
    build_repository(
        root, names=[options.model_name], preset="tiny", overrides=GOAL_SIZES, skip_existing=True
    )
    return root


def raw_state_bytes(repository: Path, model_name: str) -> int:
    """Bytes of one session's state tensors (h, and c for an LSTM), FP32."""
    spec = read_version(repository / model_name / "1")[0]
    return sum(state.nbytes for state in spec.zero_state(1).values())


def sessions_active(metrics_url: str) -> float:
    """rnnserve_sessions_active summed over model versions, scraped from /metrics."""
    with urllib.request.urlopen(metrics_url, timeout=10) as answer:
        text = answer.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("rnnserve_sessions_active{")
    )


def start_idle_sessions(server: servers.Running, model_name: str, count: int, first: int) -> None:
    """Starts `count` sessions (a multiple of FILL_ROWS; ids above 1,000,000 + `first`) and
    leaves them idle: each request starts FILL_ROWS of them."""
    requests = count // FILL_ROWS
    filled = loadgen.run(
        loadgen.Load(
            server.target,
            rows_request_json(model_name, FILL_ROWS),
            min(FILL_CLIENTS, requests),  # k6 wants no more clients than requests
            warmup_s=0,
            sessions=True,
            iterations=requests,
            rows=FILL_ROWS,
            sequence_base=1_000_000 + first,
        )
    )
    if filled["errors"] or filled["failed_rows"]:
        raise UsageError(
            f"{filled['errors']:.0f} fill requests and "
            f"{filled['failed_rows']:.0f} session starts failed"
        )


def _settled_rss(pid: int) -> int:
    time.sleep(1.0)  # let the server finish answering and the allocator settle
    return procs.rss_bytes(pid)


def run(options: Options) -> ScenarioResult:
    counts = QUICK_COUNTS if options.quick else COUNTS
    repository = goal_repository(options)
    raw = raw_state_bytes(repository, options.model_name)
    figures = []
    for _ in range(options.runs):
        with servers.rnnserve(options.workdir, repository, SERVER_SETTINGS) as server:
            baseline = _settled_rss(server.pid)
            held = 0
            for count in counts:
                if count > held:
                    start_idle_sessions(server, options.model_name, count - held, held)
                    held = count
                rss = _settled_rss(server.pid)
                per_session = (rss - baseline) / count if count else 0.0
                figure = {
                    "rss_mib": rss / 2**20,
                    "sessions_active": sessions_active(server.metrics_url),
                    "bytes_per_session": per_session,
                    "raw_state_bytes": float(raw),
                    "per_session_over_raw": per_session / raw,
                }
                figures.append((count, figure))
    merged = [
        Figure(
            f"{count:,} idle sessions",
            {"sessions": count},
            [figure for c, figure in figures if c == count],
        )
        for count in counts
    ]
    line_plot(
        options.out / "memory.png",
        "Resident memory with idle sessions",
        "idle sessions",
        "RSS (MiB)",
        {"rnnserve": [(f.params["sessions"], f.median["rss_mib"]) for f in merged]},
    )
    return ScenarioResult(
        name="memory",
        title="5. Memory: idle sessions",
        description=(
            f"Resident memory of one server process holding idle sessions of "
            f"{options.model_name} {GOAL_SIZES['num_layers']}x{GOAL_SIZES['hidden_size']} "
            f"(memory state store), each started by one row of a multi-session request of "
            f"{FILL_ROWS} rows and left; bytes per session are (RSS - RSS with none) / "
            "sessions; raw state bytes count its FP32 state (h and c)."
        ),
        figures=merged,
        environment=environment(options.runs),
        command=options.command,
    )
