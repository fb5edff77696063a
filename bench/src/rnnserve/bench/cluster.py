"""Scenario 9: scaling out. `rnnserve serve --workers 4` over a local Redis Cluster of 3
masters with a replica each (bench/redis_cluster.py), for both shared state stores and both
durabilities:

- session-steps per second at 64 and 256 sessions (k6, one connection per session, one
  step per request), with `--state-durability none` and `replica` (each acknowledged write
  on a replica first: WAIT); the difference is the durability's cost per step;
- a durable write's latency: one write of a session's state through the stores' Redis
  client, one at a time, with each durability: WAIT's cost per write without the server;
- bytes per idle session in Redis: INFO memory's used_memory of the masters (and of every
  node, replicas included) with FILL sessions started and left idle, less before, over
  FILL. The redis store keeps each state in Redis; the owned store keeps it in the worker
  that steps it and only its owner and index entries in Redis.

docs/performance.md sizes a deployment for a million sessions from these figures.
"""

from __future__ import annotations

import asyncio
import time

from rnnserve.bench import servers
from rnnserve.bench.memory import FILL_ROWS, raw_state_bytes, start_idle_sessions
from rnnserve.bench.options import Options
from rnnserve.bench.plots import bar_plot
from rnnserve.bench.redis_cluster import LocalCluster
from rnnserve.bench.report import Figure, Metrics, ScenarioResult, environment, quantiles_ms
from rnnserve.bench.sessions import SERVER_SETTINGS, SHARED_STORES, session_runs
from rnnserve.service.sessions.redis.client import Command, RedisClient

WORKERS = 4
SESSIONS = (64, 256)
QUICK_SESSIONS = (4,)
FILL = 10_000  # idle sessions whose bytes in Redis are counted
QUICK_FILL = 2 * FILL_ROWS
DURABILITIES = ("none", "replica")
WRITES = 2000  # timed writes per run of the write probe
QUICK_WRITES = 50


def run(options: Options) -> ScenarioResult:
    counts = QUICK_SESSIONS if options.quick else SESSIONS
    fill = QUICK_FILL if options.quick else FILL
    writes = QUICK_WRITES if options.quick else WRITES
    raw = raw_state_bytes(options.repository, options.model_name)
    figures: list[Figure] = []
    bars: dict[str, dict[str, float]] = {}
    with LocalCluster(options.workdir / "redis-cluster") as cluster:
        for durability in DURABILITIES:
            runs = [_write_probe(cluster.url, durability, raw, writes) for _ in range(options.runs)]
            label = f"one state write, durability {durability}"
            figures.append(Figure(label, {"durability": durability, "writes": writes}, runs))
        for store in SHARED_STORES:
            for durability in DURABILITIES:
                settings = {
                    **SERVER_SETTINGS,
                    "workers": str(WORKERS),
                    "state_store": store,
                    "redis_url": cluster.url,
                    "state_durability": durability,
                }
                with servers.rnnserve(options.workdir, options.repository, settings) as server:
                    if durability == "none":  # the bytes a session holds do not depend on it
                        figures.append(_idle_bytes(cluster, server, options, store, fill, raw))
                    group = bars.setdefault(f"{store} store, durability {durability}", {})
                    for sessions in counts:
                        cpu = cluster.cpu_seconds()
                        runs = session_runs(options, server, sessions, len(figures) * 100_000)
                        # The masters' CPU over the runs, over their steps: the measured ones
                        # and the warm-ups' (taken at the measured rate).
                        seconds = options.duration_s + options.warmup_s
                        steps = sum(one["rps"] * seconds for one in runs)
                        per_step_us = 1e6 * (cluster.cpu_seconds() - cpu) / max(steps, 1.0)
                        for one in runs:
                            one["redis_cpu_us_per_step"] = per_step_us
                        params = {"store": store, "durability": durability, "sessions": sessions}
                        label = f"{sessions} sessions, {store} store, durability {durability}"
                        figures.append(Figure(label, params, runs))
                        group[f"{sessions} sessions"] = figures[-1].median["rps"]
    bar_plot(options.out / "cluster.png", "4 workers over a Redis Cluster", "steps/s", bars)
    return ScenarioResult(
        name="cluster",
        title="12. Scaling out: 4 workers over a Redis Cluster",
        description=(
            f"`rnnserve serve --workers {WORKERS}` (SO_REUSEPORT) with the owned or the redis "
            "state store over a local Redis Cluster of 3 masters and 3 replicas "
            "(redis-server processes on this machine), `--state-durability none` or "
            f"`replica`. Steps: k6, one virtual user per session of {options.model_name}, each "
            "on its own connection, one step per ModelInfer; `rps` counts successful "
            "session-steps; `redis_cpu_us_per_step` is the CPU the masters used over a "
            "figure's runs over their steps (the warm-ups' counted at the measured rate). "
            f"State writes: {writes:,} SETs of a state's bytes with a TTL, one "
            "at a time, through the stores' Redis client (with WAIT 1 on the master under "
            f"`replica`), from this process. Idle bytes: {fill:,} sessions started by "
            "multi-session requests and left idle; INFO memory's used_memory summed over the "
            "masters (and over every node) after, less before, over the sessions; raw state "
            "bytes count the FP32 state (h and c) of one session."
        ),
        figures=figures,
        environment=environment(options.runs),
        command=options.command,
    )


def _idle_bytes(
    cluster: LocalCluster,
    server: servers.Running,
    options: Options,
    store: str,
    fill: int,
    raw: int,
) -> Figure:
    masters, every_node = cluster.used_memory(), cluster.used_memory(masters_only=False)
    first = 10_000_000 * (
        1 + SHARED_STORES.index(store)
    )  # apart from the steps' and the other store's ids
    start_idle_sessions(server, options.model_name, fill, first)
    cluster.wait_healthy()  # the replicas have caught up
    figure: Metrics = {
        "bytes_per_session_masters": (cluster.used_memory() - masters) / fill,
        "bytes_per_session_all_nodes": (cluster.used_memory(False) - every_node) / fill,
        "raw_state_bytes": float(raw),
    }
    params = {"store": store, "sessions": fill}
    return Figure(f"{fill:,} idle sessions in Redis, {store} store", params, [figure])


def _write_probe(url: str, durability: str, size: int, writes: int) -> Metrics:
    """Latencies of `writes` state-sized writes through the stores' client, one at a time."""
    return asyncio.run(_time_writes(url, durability, size, writes))


async def _time_writes(url: str, durability: str, size: int, writes: int) -> Metrics:
    client = RedisClient(url, "rnnserve-bench", 5.0, durability)
    payload, samples = bytes(size), []
    try:
        for index in range(writes):
            key = client.keys.key("state", f"probe-{index % 256}")  # spread over the masters
            began = time.perf_counter_ns()
            await client.run([Command.of("SET", key, payload, "PX", 60_000)], durable=True)
            samples.append(time.perf_counter_ns() - began)
    finally:
        await client.close()
    return quantiles_ms(samples)
