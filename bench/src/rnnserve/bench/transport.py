"""Scenario 2, the transport floor: the bare gRPC echo server (bench/echo.py) driven by
k6 at 1, 16 and 64 connections, plus one-request-at-a-time probes of ModelInfer and
ModelStreamInfer. Every other figure is read against these."""

from __future__ import annotations

from rnnserve.bench import loadgen, probe, servers
from rnnserve.bench.options import Options
from rnnserve.bench.payloads import step_request_json
from rnnserve.bench.plots import line_plot
from rnnserve.bench.report import Figure, ScenarioResult, environment

CLIENTS = (1, 16, 64)
QUICK_CLIENTS = (1, 16)


def probe_steps(options: Options) -> int:
    return 200 if options.quick else 3000


def run(options: Options) -> ScenarioResult:
    figures = []
    with servers.echo_server(options.workdir) as echo:
        for clients in QUICK_CLIENTS if options.quick else CLIENTS:
            load = loadgen.Load(
                echo.target,
                step_request_json(options.model_name),
                clients,
                duration_s=options.duration_s,
                warmup_s=options.warmup_s,
                server_pid=echo.pid,
            )
            runs = [loadgen.run(load) for _ in range(options.runs)]
            figures.append(Figure(f"k6 ModelInfer x{clients}", {"clients": clients}, runs))
        steps = probe_steps(options)
        for rpc, measure in (
            ("ModelInfer", probe.unary_steps),
            ("ModelStreamInfer", probe.stream_steps),
        ):
            runs = [
                measure(echo.target, options.model_name, steps, steps // 10, 0)
                for _ in range(options.runs)
            ]
            figures.append(Figure(f"probe {rpc}", {"clients": 1, "rpc": rpc}, runs))
    k6_figures = [f for f in figures if f.label.startswith("k6")]
    line_plot(
        options.out / "transport.png",
        "Transport floor: bare gRPC echo, one process",
        "concurrent clients",
        "requests per second",
        {"echo (k6)": [(f.params["clients"], f.median["rps"]) for f in k6_figures]},
        logx=True,
    )
    return ScenarioResult(
        name="transport",
        title="2. Transport floor: bare gRPC echo server, one Python process",
        description=(
            "bench/echo.py parses each ModelInferRequest and returns a precomputed one-step "
            "sine answer (`y` FP32 [1,1,1]) on grpc.aio, like rnnserve. `k6` rows: one "
            "connection per client, latency and requests/s as k6 saw them. `probe` rows: one "
            "request in flight from a synchronous Python client (the floor for scenario 3). "
            "`k6_cpu_us_per_request` against `server_cpu_us_per_request` shows what the "
            "generator costs beside the server it drives."
        ),
        figures=figures,
        environment=environment(options.runs),
        command=options.command,
    )
