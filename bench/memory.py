"""Scenario 5: resident memory of rnnserve holding idle sessions of the LSTM sine model,
and bytes per session against the raw bytes of its state tensors."""

from __future__ import annotations

import time
import urllib.request

from bench import loadgen, procs, servers
from bench.options import Options
from bench.payloads import step_request_json
from bench.plots import line_plot
from bench.report import Figure, ScenarioResult, environment
from bench.sessions import SERVER_SETTINGS
from rnnserve.errors import UsageError
from service.repository import read_spec

COUNTS = (0, 10_000, 100_000)
QUICK_COUNTS = (0, 200)
FILL_CLIENTS = 64


def raw_state_bytes(options: Options) -> int:
    """Bytes of one session's state tensors (h, and c for an LSTM), FP32."""
    spec = read_spec(options.repository / options.model_name / "1" / "model.onnx")
    return len(spec.state_names) * spec.state_rows * spec.hidden_size * 4


def sessions_active(metrics_url: str) -> float:
    """rnnserve_sessions_active summed over model versions, scraped from /metrics."""
    with urllib.request.urlopen(metrics_url, timeout=10) as answer:
        text = answer.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("rnnserve_sessions_active{")
    )


def _settled_rss(pid: int) -> int:
    time.sleep(1.0)  # let the server finish answering and the allocator settle
    return procs.rss_bytes(pid)


def run(options: Options) -> ScenarioResult:
    counts = QUICK_COUNTS if options.quick else COUNTS
    raw = raw_state_bytes(options)
    figures = []
    for _ in range(options.runs):
        with servers.rnnserve(options.workdir, options.repository, SERVER_SETTINGS) as server:
            baseline = _settled_rss(server.pid)
            held = 0
            for count in counts:
                if count > held:
                    # Each request starts a new session and leaves it idle.
                    filled = loadgen.run(
                        loadgen.Load(
                            server.target,
                            step_request_json(options.model_name),
                            FILL_CLIENTS,
                            warmup_s=0,
                            sessions=True,
                            iterations=count - held,
                            sequence_base=1_000_000 + held,
                        )
                    )
                    if filled["errors"]:
                        raise UsageError(f"{filled['errors']:.0f} session starts failed")
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
            f"Resident memory of the server process family holding idle sessions of "
            f"{options.model_name}, each started by one step and left; bytes per session "
            "are (RSS - RSS with none) / sessions; raw state bytes count its FP32 state."
        ),
        figures=merged,
        environment=environment(options.runs),
        command=options.command,
    )
