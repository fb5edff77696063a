"""Scenario 9: streams, and the one-step goals, side by side with the echo floor.

A stateful client naturally talks over one ModelStreamInfer stream per session, one step
per message: k6 drives 1, 16 and 64 such streams against rnnserve and against the echo
floor (bench/echo.py answers stream messages too), and multi-session requests (64 rows
per message, 16 streams) the same way. The model floor (bench/echo.py --model: the
request parsed, one ONNX Runtime run from a dict of states, the answer) takes the unary
loads and 64 streams too: what rnnserve spends beyond it is its own layers', what it
spends beyond the echo is the model's run. Beside them, in the same run, the unary figures the
goals read (one step per ModelInfer from 64 sessions, 64-row requests from 16 clients, one
session's step latency from the probe), so that every goal is a ratio of two figures
measured minutes apart on one machine. The servers run side by side and each run
measures every load on each in turn: a drift of the (shared) machine weighs on all.
"""

from __future__ import annotations

import contextlib
import itertools
import statistics
from dataclasses import dataclass

from rnnserve.bench import loadgen, probe, servers
from rnnserve.bench.multi_session import CLIENTS, QUICK_CLIENTS, QUICK_ROWS, ROWS
from rnnserve.bench.options import Options
from rnnserve.bench.payloads import rows_request_json, step_request_json
from rnnserve.bench.plots import line_plot
from rnnserve.bench.report import Figure, Metrics, ScenarioResult, environment
from rnnserve.bench.sessions import session_server
from rnnserve.bench.transport import probe_steps
from rnnserve.service import affinity
from rnnserve.service.busy_poll import WINDOW_US, auto_window_us
from rnnserve.service.settings import Settings

SESSIONS, QUICK_SESSIONS = (1, 16, 64), (1, 4)
Key = tuple[str, str, int, int, bool]  # server, rpc, sessions, rows, probe
MODEL_FLOOR = "model floor"
ALONE = "rnnserve --no-coalesce-steps"  # every step runs by itself, none joins a batch
DELAY_US = 2000  # a coalesced batch's wait for unary calls, one per listener in a turn
DELAYED = f"rnnserve --coalesce-max-delay-us {DELAY_US}"
# The echo floor with as many grpc.aio servers on its port as rnnserve has by default: what
# the same lever gives a server that does nothing, beside the floor of one.
LISTENERS = Settings.model_fields["grpc_listeners"].default
ECHO_LISTENING = f"echo --listeners {LISTENERS}"
# Each server's threads on one core (service/affinity.py): a step's hand-offs between
# grpc's threads and the event loop wake no other core. The echo floor pinned the same way
# beside it, as for the listeners.
PINNED = "rnnserve --cpu-affinity auto"
ECHO_PINNED = "echo --cpu-affinity auto"
# By default, where a core is to spare, rnnserve's event loop keeps polling, awake, for a
# window after a lone client's requests (service/busy_poll.py): its next request finds the
# loop running. The echo floor polling the same way beside it, and an
# rnnserve whose loop sleeps when idle, as the echo floor's does.
ECHO_POLLING = f"echo --busy-poll-us {WINDOW_US}"
SLEEPING = "rnnserve --busy-poll-us 0"


def started_with(server: str) -> str:
    """How an rnnserve of this scenario was started, as its notes and goals say it: "" for
    the defaults, " with" and its flags otherwise."""
    flags = server.removeprefix("rnnserve")
    return f" with{flags}" if flags else ""


@dataclass(frozen=True)
class Load:
    """One load of the scenario, on one server."""

    server: str  # "echo", ECHO_LISTENING, ECHO_PINNED, ECHO_POLLING, "model floor",
    # "rnnserve", ALONE, DELAYED, PINNED or SLEEPING
    rpc: str  # "ModelInfer" or "ModelStreamInfer"
    sessions: int  # connections (streams), one session each, or each stepping `rows`
    rows: int = 0  # > 0: multi-session requests of this many rows
    probe: bool = False  # one session's steps from the Python probe instead of k6

    @property
    def label(self) -> str:
        if self.probe:
            return f"{self.server} one session {self.rpc} (probe)"
        rows = f", {self.rows} rows each" if self.rows else ""
        return f"{self.server} {self.rpc} x{self.sessions}{rows}"


def loads(quick: bool) -> list[Load]:
    counts = QUICK_SESSIONS if quick else SESSIONS
    rows, clients = (QUICK_ROWS, QUICK_CLIENTS) if quick else (ROWS, CLIENTS)
    unary, stream = "ModelInfer", "ModelStreamInfer"
    every: list[Load] = [
        Load(MODEL_FLOOR, unary, 1, probe=True),
        Load(MODEL_FLOOR, unary, counts[-1]),
        Load(MODEL_FLOOR, unary, clients),
        Load(MODEL_FLOOR, stream, counts[-1]),
        Load(ECHO_LISTENING, unary, counts[-1]),
    ]
    for server in ("echo", "rnnserve"):
        every.append(Load(server, unary, 1, probe=True))
        every += [Load(server, unary, counts[-1]), Load(server, unary, clients)]
        every += [Load(server, stream, count) for count in counts]
        if clients not in counts:
            every.append(Load(server, stream, clients))
        if server == "rnnserve":
            every += [Load(server, unary, clients, rows), Load(server, stream, clients, rows)]
    every += [Load(ALONE, unary, counts[-1])]
    every += [Load(ALONE, stream, count) for count in counts]
    for server in (DELAYED, PINNED, SLEEPING):
        every += [Load(server, unary, 1, probe=True), Load(server, unary, counts[-1])]
        every.append(Load(server, unary, clients))
    for server in (PINNED, SLEEPING):
        every.append(Load(server, stream, counts[-1]))
    for server in (ECHO_PINNED, ECHO_POLLING):
        every += [Load(server, unary, 1, probe=True), Load(server, unary, counts[-1])]
        every.append(Load(server, stream, counts[-1]))
    return list(dict.fromkeys(every))


def _measure(options: Options, load: Load, server: servers.Running, first: int) -> Metrics:
    if load.probe:
        steps = probe_steps(options)
        return probe.unary_steps(server.target, options.model_name, steps, steps // 10, first)
    request = (
        rows_request_json(options.model_name, load.rows)
        if load.rows
        else step_request_json(options.model_name)
    )
    return loadgen.run(
        loadgen.Load(
            server.target, request, load.sessions, duration_s=options.duration_s,
            warmup_s=options.warmup_s, sessions=True, rows=load.rows, server_pid=server.pid,
            sequence_base=first, stream=load.rpc == "ModelStreamInfer",
        )
    )  # fmt: skip


def run(options: Options) -> ScenarioResult:
    every = loads(options.quick)
    runs: dict[Load, list[Metrics]] = {load: [] for load in every}
    with contextlib.ExitStack() as stack:
        running = {
            "echo": stack.enter_context(servers.echo_server(options.workdir)),
            ECHO_LISTENING: stack.enter_context(
                servers.echo_server(options.workdir, listeners=LISTENERS)
            ),
            ECHO_PINNED: stack.enter_context(
                servers.echo_server(options.workdir, cpu_affinity="auto")
            ),
            ECHO_POLLING: stack.enter_context(
                servers.echo_server(options.workdir, busy_poll_us=WINDOW_US)
            ),
            MODEL_FLOOR: stack.enter_context(
                servers.echo_server(
                    options.workdir,
                    model=options.repository / options.model_name / "1" / "model.onnx",
                )
            ),
            "rnnserve": stack.enter_context(session_server(options)),
            ALONE: stack.enter_context(session_server(options, coalesce_steps=False)),
            DELAYED: stack.enter_context(session_server(options, coalesce_max_delay_us=DELAY_US)),
            PINNED: stack.enter_context(session_server(options, cpu_affinity="auto")),
            SLEEPING: stack.enter_context(session_server(options, busy_poll_us="0")),
        }
        for run in range(options.runs):
            for index, load in enumerate(every):
                first = 1 + (run * len(every) + index) * 100_000  # fresh ids every time
                runs[load].append(_measure(options, load, running[load.server], first))
    figures = {
        load: Figure(
            load.label,
            {"server": load.server, "rpc": load.rpc, "sessions": load.sessions, "rows": load.rows},
            runs[load],
        )
        for load in every
    }
    line_plot(
        options.out / "streams.png",
        "Streams: one step per message, a stream per session",
        "concurrent sessions (one stream each)",
        "session-steps per second",
        {
            server: [
                (load.sessions, figure.median["rps"])
                for load, figure in figures.items()
                if load.server == server and load.rpc == "ModelStreamInfer" and not load.rows
            ]
            for server in ("echo", "rnnserve", ALONE)
        },
        logx=True,
    )
    spare = "as here" if auto_window_us(affinity.NONE) else "not here: it sleeps"
    return ScenarioResult(
        name="streams",
        title="9. Streams, and the one-step goals, against the echo floor in one run",
        description=(
            f"{options.model_name} in sessions on rnnserve (one worker, memory store, "
            f"{LISTENERS} gRPC listeners as by default), beside the echo floor and the model "
            "floor (the model's run alone: bench/echo.py), all running throughout; each run "
            "measures every row on each in turn. "
            f"`{ECHO_LISTENING}`: the echo floor with as many grpc.aio servers sharing its "
            "port as rnnserve's listeners. "
            "By default rnnserve runs the steps of different sessions that arrive in one "
            "turn of its event loop as one batch (dataplane/coalescing.py); "
            f"`{ALONE}`: a second rnnserve that runs every step by itself; "
            f"`{DELAYED}`: a third, whose batches wait up to {DELAY_US} µs for unary calls, "
            "which reach its handlers at most one per listener in a turn; "
            f"`{PINNED}`: a fourth, whose threads run on one CPU (the first it may use), "
            f"beside `{ECHO_PINNED}`, the echo floor pinned the same way; "
            "By default rnnserve's event loop polls, awake, for "
            f"{WINDOW_US} µs after a lone client's requests (each that ran alone, of the "
            "session of the one before, within the window of it), where a core is to spare "
            f"({spare}), beside `{ECHO_POLLING}`, the echo floor "
            f"polling the same way; `{SLEEPING}`: a fifth, whose loop sleeps when idle. "
            "`ModelStreamInfer xN` rows: k6, N connections with one stream each, one "
            "session per stream and one step per message, the next written when the last "
            "was answered (k6 times stream messages to the millisecond only). `ModelInfer "
            "xN` rows: one step per request, as in scenario 4. `rows` > 0: each message or "
            "request steps that many sessions (control tensors), as in scenario 6; `rps` "
            "counts messages or requests, `session_steps_per_s` the rows. `(probe)` rows: "
            "one session, one step in flight, from the Python probe of scenario 3."
        ),
        figures=list(figures.values()),
        notes=_ratios(figures, every),
        environment=environment(options.runs),
        command=options.command,
    )


def _ratios(figures: dict[Load, Figure], every: list[Load]) -> list[str]:
    """The goals of issue 18 run by run: each ratio per run (its floor from the same run),
    the median and the spread."""
    find = {(load.server, load.rpc, load.sessions, load.rows, load.probe): load for load in every}
    notes = []

    def note(text: str, load: Key, floor: Key, metric: str, floor_metric: str) -> None:
        if load not in find or floor not in find:
            return
        ours, base = figures[find[load]].runs, figures[find[floor]].runs
        ratios = [a[metric] / b[floor_metric] for a, b in zip(ours, base, strict=True)]
        spread = ", ".join(f"{ratio:.2f}" for ratio in ratios)
        notes.append(
            f"{text}: median {statistics.median(ratios):.2f}× (runs: {spread}; "
            f"spread {min(ratios):.2f}–{max(ratios):.2f})."
        )

    unary, stream = "ModelInfer", "ModelStreamInfer"
    top = max(load.sessions for load in every if not load.rows and not load.probe)
    clients = max(load.sessions for load in every if load.rows)
    note(
        f"The model floor's one-step ModelInfer at {top} sessions, steps/s over echo's "
        "requests/s (the most a server that runs the model step by step reaches)",
        (MODEL_FLOOR, unary, top, 0, False), ("echo", unary, top, 0, False), "rps", "rps",
    )  # fmt: skip
    note(
        f"The model floor's streams at {top} sessions, steps/s over the streaming echo's "
        "messages/s",
        (MODEL_FLOOR, stream, top, 0, False), ("echo", stream, top, 0, False), "rps", "rps",
    )  # fmt: skip
    note(
        "The model floor's one-session step p50 (probe) over echo's p50",
        (MODEL_FLOOR, unary, 1, 0, True), ("echo", unary, 1, 0, True), "p50_ms", "p50_ms",
    )  # fmt: skip
    for server in ("rnnserve", DELAYED, PINNED, SLEEPING):
        note(
            f"One session's step p50 (probe){started_with(server)} over echo's p50",
            (server, unary, 1, 0, True), ("echo", unary, 1, 0, True), "p50_ms", "p50_ms",
        )  # fmt: skip
    # Each setting's rnnserve also over the echo floor set alike (its twin).
    for server, twin in (("rnnserve", ECHO_POLLING), (PINNED, ECHO_PINNED)):
        note(
            f"One session's step p50 (probe){started_with(server)} over the p50 of `{twin}`",
            (server, unary, 1, 0, True), (twin, unary, 1, 0, True), "p50_ms", "p50_ms",
        )  # fmt: skip
        note(
            f"`{twin}`: one session's step p50 (probe) over echo's p50",
            (twin, unary, 1, 0, True), ("echo", unary, 1, 0, True), "p50_ms", "p50_ms",
        )  # fmt: skip
    note(
        f"The echo floor with {LISTENERS} listeners, one-step ModelInfer at {top} sessions, "
        "requests/s over echo's (one listener)",
        (ECHO_LISTENING, unary, top, 0, False), ("echo", unary, top, 0, False), "rps", "rps",
    )  # fmt: skip
    for server in ("rnnserve", ALONE, DELAYED, PINNED, SLEEPING):
        setting = started_with(server)
        note(
            f"One-step ModelInfer at {top} sessions{setting}, steps/s over echo's requests/s",
            (server, unary, top, 0, False), ("echo", unary, top, 0, False), "rps", "rps",
        )  # fmt: skip
        note(
            f"The same over the requests/s of the echo floor with {LISTENERS} listeners",
            (server, unary, top, 0, False), (ECHO_LISTENING, unary, top, 0, False), "rps",
            "rps",
        )  # fmt: skip
        note(
            f"Streams at {top} sessions{setting}, steps/s over the streaming echo's messages/s",
            (server, stream, top, 0, False), ("echo", stream, top, 0, False), "rps", "rps",
        )  # fmt: skip
    for (server, twin), rpc in itertools.product(
        (("rnnserve", ECHO_POLLING), (PINNED, ECHO_PINNED)), (unary, stream)
    ):
        note(
            f"{rpc} at {top} sessions{started_with(server)}, steps/s over the "
            f"{rpc} requests/s of `{twin}`",
            (server, rpc, top, 0, False), (twin, rpc, top, 0, False), "rps", "rps",
        )  # fmt: skip
    for rpc in (unary, stream):
        note(
            f"Multi-session {rpc} from {clients} clients, session-steps/s over echo's "
            f"{rpc} requests/s at {clients}",
            ("rnnserve", rpc, clients, max(load.rows for load in every), False),
            ("echo", rpc, clients, 0, False),
            "session_steps_per_s",
            "rps",
        )
    for load in every:
        if load.server in ("rnnserve", ALONE, DELAYED, PINNED, SLEEPING) and not load.probe:
            echo = find.get(("echo", load.rpc, load.sessions, 0, False))
            cpu = figures[load].median.get("server_cpu_us_per_request", 0.0)
            if echo is not None and not load.rows:
                floor = figures[echo].median.get("server_cpu_us_per_request", 0.0)
                text = (
                    f"Server CPU per step, {load.server} {load.rpc} x{load.sessions}: "
                    f"{cpu:.0f} µs, echo "
                    f"{floor:.0f} µs: {cpu - floor:.0f} µs beyond the echo server's"
                )
                model = find.get((MODEL_FLOOR, load.rpc, load.sessions, 0, False))
                if model is not None:
                    bare = figures[model].median.get("server_cpu_us_per_request", 0.0)
                    text += (
                        f"; the model floor {bare:.0f} µs: the model's run {bare - floor:.0f} µs"
                    )
                    text += (
                        f", rnnserve's layers {cpu - bare:.0f} µs"
                        if cpu >= bare
                        else f", {bare - cpu:.0f} µs more than rnnserve's (its batches run the "
                        "model once for many steps)"
                    )
                notes.append(text + ".")
    return notes
