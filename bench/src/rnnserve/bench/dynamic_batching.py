"""Scenario 15: dynamic batching of stateless requests. k6 sends stateless ModelInfer
requests of one step, and of `LONG` steps (100 and 1,000: more ORT work per row), from 1,
16 and 64 clients (a connection each), to rnnserve with `--dynamic-batching` off and on (its
default knobs: no preferred sizes, 100 µs of queue delay, 64 rows at most), and the
one-step requests to the echo floor measured in the same run: requests/s and p50, and each
read against the floor. The notes say where batching starts to pay on this CPU (its
requests/s over those without) and where it loses."""

from __future__ import annotations

import os

from rnnserve.bench import loadgen, servers
from rnnserve.bench.options import Options
from rnnserve.bench.payloads import step_request_json
from rnnserve.bench.plots import line_plot
from rnnserve.bench.report import Figure, Metrics, ScenarioResult, environment

CLIENTS, QUICK_CLIENTS = (1, 16, 64), (1, 4)
LONG, QUICK_LONG = (100, 1000), (10,)  # steps of the longer requests: more work per row


def _runs(options: Options, server: servers.Running, clients: int, steps: int) -> list[Metrics]:
    load = loadgen.Load(
        server.target,
        step_request_json(options.model_name, steps),
        clients,
        duration_s=options.duration_s,
        warmup_s=options.warmup_s,
        server_pid=server.pid,
    )
    return [loadgen.run(load) for _ in range(options.runs)]


def run(options: Options) -> ScenarioResult:
    counts = QUICK_CLIENTS if options.quick else CLIENTS
    lengths = (1, *(QUICK_LONG if options.quick else LONG))
    figures: list[Figure] = []
    floors: dict[int, Figure] = {}
    with servers.echo_server(options.workdir) as echo:
        for clients in counts:
            floors[clients] = Figure(
                f"echo floor x{clients}",
                {"server": "echo", "clients": clients, "steps": 1},
                _runs(options, echo, clients, 1),
            )
    figures += floors.values()
    measured: dict[tuple[bool, int, int], Figure] = {}
    for batching in (False, True):
        settings = {"dynamic_batching": str(batching).lower()}
        with servers.rnnserve(options.workdir, options.repository, settings) as server:
            for steps in lengths:
                for clients in counts:
                    figure = Figure(
                        f"batching {'on' if batching else 'off'}, {steps} steps x{clients}",
                        {"server": "rnnserve", "clients": clients, "steps": steps,
                         "batching": batching},
                        _runs(options, server, clients, steps),
                    )  # fmt: skip
                    if steps == 1:
                        floor = floors[clients].median
                        figure.median["rps_over_floor"] = figure.median["rps"] / floor["rps"]
                        figure.median["p50_over_floor"] = figure.median["p50_ms"] / floor["p50_ms"]
                    measured[(batching, steps, clients)] = figure
    figures += measured.values()
    notes = _crossover(measured, counts, lengths)
    line_plot(
        options.out / "dynamic_batching.png",
        f"Stateless requests of {options.model_name}, dynamic batching off and on",
        "concurrent clients",
        "requests per second",
        {
            f"{steps} steps, batching {'on' if on else 'off'}": [
                (clients, measured[(on, steps, clients)].median["rps"]) for clients in counts
            ]
            for steps in lengths
            for on in (False, True)
        },
        logx=True,
    )
    return ScenarioResult(
        name="dynamic_batching",
        title="15. Dynamic batching: stateless requests, batched and alone",
        description=(
            f"k6, 1 to {counts[-1]} clients each on its own connection, sending stateless "
            f"ModelInfer requests of {options.model_name} (x [1, steps, 1], asking for `y`) "
            "to `rnnserve serve` without and with `--dynamic-batching` (100 µs of queue "
            "delay, 64 rows at most, no preferred sizes), and the one-step requests to the "
            "echo floor in the same run: `rps_over_floor` and `p50_over_floor` read a "
            "one-step figure against the floor's at as many clients. Measured on a machine "
            f"of {os.cpu_count()} cores, shared with k6."
        ),
        figures=figures,
        notes=notes,
        environment=environment(options.runs),
        command=options.command,
    )


def _crossover(
    measured: dict[tuple[bool, int, int], Figure], counts: tuple[int, ...], lengths: tuple[int, ...]
) -> list[str]:
    """Per request length: batching's requests/s over those without at every client count,
    the fewest clients where it pays, and where it loses."""
    notes = []
    for steps in lengths:
        ratios = {
            clients: measured[(True, steps, clients)].median["rps"]
            / measured[(False, steps, clients)].median["rps"]
            for clients in counts
        }
        for clients, ratio in ratios.items():
            measured[(True, steps, clients)].median["rps_over_unbatched"] = ratio
        paying = [clients for clients, ratio in ratios.items() if ratio > 1]
        losing = [clients for clients, ratio in ratios.items() if ratio < 1]
        listed = ", ".join(f"{ratio:.2f}× at {clients}" for clients, ratio in ratios.items())
        notes.append(
            f"{steps}-step requests, batching's requests/s over those without: {listed}; "
            + (f"it pays from {paying[0]} clients" if paying else "it never pays here")
            + (f", and loses at {', '.join(map(str, losing))}." if losing else ".")
        )
    return notes
