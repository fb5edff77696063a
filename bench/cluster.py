"""Scenario 9: scaling out. `rnnserve serve --workers 4` over a local Redis Cluster of 3
masters with a replica each (bench/redis_cluster.py), for both shared state stores and both
durabilities:

- session-steps per second at 64 and 256 sessions (k6, one connection per session, one
  step per request), with `--state-durability none` and `replica` (each acknowledged write
  on a replica first: WAIT); the difference is the durability's cost per step;
- bytes per idle session in Redis: INFO memory's used_memory of the masters (and of every
  node, replicas included) with FILL sessions started and left idle, less before, over
  FILL. The redis store keeps each state in Redis; the owned store keeps it in the worker
  that steps it and only its owner and index entries in Redis.

docs/performance.md sizes a deployment for a million sessions from these figures.
"""

from __future__ import annotations

from rnnserve.bench import servers
from rnnserve.bench.memory import FILL_ROWS, raw_state_bytes, start_idle_sessions
from rnnserve.bench.options import Options
from rnnserve.bench.plots import bar_plot
from rnnserve.bench.redis_cluster import LocalCluster
from rnnserve.bench.report import Figure, Metrics, ScenarioResult, environment
from rnnserve.bench.sessions import SERVER_SETTINGS, SHARED_STORES, session_runs

WORKERS = 4
SESSIONS = (64, 256)
QUICK_SESSIONS = (4,)
FILL = 10_000  # idle sessions whose bytes in Redis are counted
QUICK_FILL = 2 * FILL_ROWS
DURABILITIES = ("none", "replica")


def run(options: Options) -> ScenarioResult:
    counts = QUICK_SESSIONS if options.quick else SESSIONS
    fill = QUICK_FILL if options.quick else FILL
    raw = raw_state_bytes(options.repository, options.model_name)
    figures: list[Figure] = []
    bars: dict[str, dict[str, float]] = {}
    with LocalCluster(options.workdir / "redis-cluster") as cluster:
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
                        runs = session_runs(options, server, sessions, len(figures) * 100_000)
                        params = {"store": store, "durability": durability, "sessions": sessions}
                        label = f"{sessions} sessions, {store} store, durability {durability}"
                        figures.append(Figure(label, params, runs))
                        group[f"{sessions} sessions"] = figures[-1].median["rps"]
    bar_plot(options.out / "cluster.png", "4 workers over a Redis Cluster", "steps/s", bars)
    return ScenarioResult(
        name="cluster",
        title="9. Scaling out: 4 workers over a Redis Cluster",
        description=(
            f"`rnnserve serve --workers {WORKERS}` (SO_REUSEPORT) with the owned or the redis "
            "state store over a local Redis Cluster of 3 masters and 3 replicas "
            "(redis-server processes on this machine), `--state-durability none` or "
            f"`replica`. Steps: k6, one virtual user per session of {options.model_name}, each "
            "on its own connection, one step per ModelInfer; `rps` counts successful "
            f"session-steps. Idle bytes: {fill:,} sessions started by multi-session requests "
            "and left idle; INFO memory's used_memory summed over the masters (and over every "
            "node) after, less before, over the sessions; raw state bytes count the FP32 state "
            "(h and c) of one session."
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
