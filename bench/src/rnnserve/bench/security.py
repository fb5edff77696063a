"""Scenario 8: what trusting sessions costs. The same two figures of scenarios 3 and 4, one
session's step latency (p50, ModelInfer, the probe) and 64 sessions' steps per second (k6,
a connection per session, one step per request), against rnnserve served in plaintext,
over TLS, over TLS with bearer tokens, and in plaintext with every step carrying
`sequence_offset`. The notes give each one's cost as a ratio to the configuration it adds
to, all measured in this run. The servers run side by side and each run measures every
setup in turn, so that a drift of the (shared) machine weighs on all of them alike."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

from rnnserve.bench import loadgen, probe, servers
from rnnserve.bench.options import Options
from rnnserve.bench.payloads import step_request_json
from rnnserve.bench.pki import Authority
from rnnserve.bench.plots import bar_plot
from rnnserve.bench.report import Figure, Metrics, ScenarioResult, environment
from rnnserve.bench.sessions import SERVER_SETTINGS
from rnnserve.bench.transport import probe_steps

SESSIONS, QUICK_SESSIONS = 64, 4
TOKEN = "bench-token-do-not-use-elsewhere"


@dataclass(frozen=True)
class Setup:
    name: str
    tls: bool = False
    token: bool = False
    offsets: bool = False
    access_log: bool = False  # every request's line in the server's log


SETUPS = (
    Setup("plaintext"),
    Setup("TLS", tls=True),
    Setup("TLS + token", tls=True, token=True),
    Setup("offsets", offsets=True),
)
# Each setup's cost is read against the one it adds to.
BASES = {"TLS": "plaintext", "TLS + token": "TLS", "offsets": "plaintext"}


@contextlib.contextmanager
def server(options: Options, setup: Setup) -> Iterator[servers.Running]:
    """rnnserve set up for sessions, with TLS (certificates made here) and tokens."""
    settings = dict(SERVER_SETTINGS)
    ca = None
    workdir = options.workdir / setup.name.replace(" ", "")
    workdir.mkdir(exist_ok=True)
    if setup.tls:
        authority = Authority(workdir / "pki")
        issued = authority.issue("127.0.0.1", server=True)
        settings |= {"tls_cert": str(issued.cert), "tls_key": str(issued.key)}
        ca = authority.cert
    if setup.token:
        tokens = workdir / "tokens.txt"
        tokens.write_text(f"bench {hashlib.sha256(TOKEN.encode()).hexdigest()} infer\n")
        settings["auth_tokens"] = str(tokens)
    if setup.access_log:
        settings["access_log"] = "true"
    with servers.rnnserve(workdir, options.repository, settings, ca=ca) as server:
        yield server


def _one_session(options: Options, server: servers.Running, setup: Setup, first: int) -> Metrics:
    steps = probe_steps(options)
    return probe.unary_steps(
        server.target, options.model_name, steps, steps // 10, first, server=server,
        token=TOKEN if setup.token else "", offsets=setup.offsets,
    )  # fmt: skip


def many_sessions(
    options: Options, server: servers.Running, setup: Setup, sessions: int, first: int
) -> Metrics:
    return loadgen.run(
        loadgen.Load(
            server.target, step_request_json(options.model_name), sessions,
            duration_s=options.duration_s, warmup_s=options.warmup_s, sessions=True,
            server_pid=server.pid, sequence_base=first,
            ca=str(server.ca or ""), token=TOKEN if setup.token else "", offsets=setup.offsets,
        )
    )  # fmt: skip


def run(options: Options) -> ScenarioResult:
    sessions = QUICK_SESSIONS if options.quick else SESSIONS
    one: dict[str, list[Metrics]] = {setup.name: [] for setup in SETUPS}
    many: dict[str, list[Metrics]] = {setup.name: [] for setup in SETUPS}
    with contextlib.ExitStack() as stack:
        running = [(setup, stack.enter_context(server(options, setup))) for setup in SETUPS]
        for run in range(options.runs):
            for index, (setup, serving) in enumerate(running):
                first = 1 + (index * options.runs + run) * 100_000  # fresh ids every time
                one[setup.name].append(_one_session(options, serving, setup, first))
                many[setup.name].append(many_sessions(options, serving, setup, sessions, first + 1))
    figures: dict[tuple[str, str], Figure] = {}
    for setup in SETUPS:
        figures[setup.name, "one"] = Figure(
            f"{setup.name}, one session", {"setup": setup.name, "sessions": 1}, one[setup.name]
        )
        figures[setup.name, "many"] = Figure(
            f"{setup.name}, {sessions} sessions",
            {"setup": setup.name, "sessions": sessions},
            many[setup.name],
        )
    bar_plot(
        options.out / "security.png",
        f"Security: {sessions} sessions' steps/s and one session's p50",
        "steps per second / milliseconds",
        {
            setup.name: {
                f"{sessions}-session steps/s": figures[setup.name, "many"].median["rps"],
                "one-session p50 (ms)": figures[setup.name, "one"].median["p50_ms"],
            }
            for setup in SETUPS
        },
    )
    return ScenarioResult(
        name="security",
        title="8. Security: TLS, tokens and step offsets",
        description=(
            f"{options.model_name} in sessions, one server per setup: plaintext; TLS "
            "(an ECDSA P-256 certificate); TLS with bearer tokens (`--auth-tokens`, every "
            "call authenticated and authorized); plaintext with every step carrying "
            "`sequence_offset`. `one session` rows: one session's steps through ModelInfer, "
            "one in flight, from a synchronous Python client (as in scenario 3). "
            f"`{sessions} sessions` rows: k6, one connection per session, one step per "
            "ModelInfer (as in scenario 4); `rps` counts session-steps."
        ),
        figures=list(figures.values()),
        notes=_costs(figures, sessions),
        environment=environment(options.runs),
        command=options.command,
    )


def _costs(figures: dict[tuple[str, str], Figure], sessions: int) -> list[str]:
    """Each setup against the one it adds to: steps/s kept, and p50 grown, as ratios."""
    notes = []
    for name, base in BASES.items():
        rps = figures[name, "many"].median["rps"] / figures[base, "many"].median["rps"]
        p50 = figures[name, "one"].median["p50_ms"] / figures[base, "one"].median["p50_ms"]
        notes.append(
            f"{name} against {base}: {sessions}-session steps/s × {rps:.3f} "
            f"({(1 - rps) * 100:+.1f} % cost), one-session p50 × {p50:.3f}."
        )
    return notes
