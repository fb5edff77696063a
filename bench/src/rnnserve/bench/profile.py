"""`rnnserve bench --profile`: where the server's time goes under the goal loads.

py-spy samples the server process while k6 drives it, as in scenarios 4 and 6 (one step
per request from 64 sessions; multi-session requests of 64 rows from 16 clients). The
samples are folded two ways and written to profile.md: by module, the share of samples
whose stack passes through it (inclusive), and by function, the share of samples it was
on top of (self). Only samples of the thread holding the GIL count (`--gil`): one Python
process runs one such thread at a time, so they show what bounds its requests per second
(ONNX Runtime computes without the GIL, on threads of its own). Sampling runs beside the
server (`--nonblocking`); it does take CPU on a machine of two cores, so read shares, not
rates.
"""

from __future__ import annotations

import collections
import functools
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from rnnserve.bench import loadgen, procs, servers
from rnnserve.bench.multi_session import CLIENTS, QUICK_CLIENTS, QUICK_ROWS, ROWS
from rnnserve.bench.options import Options
from rnnserve.bench.payloads import rows_request_json, step_request_json
from rnnserve.bench.sessions import SERVER_SETTINGS
from rnnserve.protocol.errors import UsageError

TOP = 15
RATE_HZ = 250
LIBRARIES = {"grpc", "onnxruntime", "numpy", "google", "prometheus_client", "redis", "asyncio"}
# py-spy names a frame "function (path:line)"; the path is what groups it.
FRAME = re.compile(r"^(?P<function>.*) \((?P<path>[^()]*?)(?::\d+)?\)$")


@dataclass
class Profile:
    label: str
    samples: int
    modules: list[tuple[str, float]]  # our module or library, share of samples through it
    functions: list[tuple[str, float]]  # function, share of samples on top
    load: dict[str, float]  # what k6 measured meanwhile


def module_of(path: str) -> str:
    """A frame's file as a reader knows it: service/sessions/manager.py for ours, the
    top-level package for others (py-spy names files relative to their sys.path entry)."""
    if path.startswith("service/"):
        return path
    return path.split("/", 1)[0].removesuffix(".py")


def attributed(module: str) -> bool:
    """Modules whose share says where time goes: ours, the libraries we call and the event
    loop; not the frames every stack starts with (runpy, the CLI, threading)."""
    return (module.startswith("service/") and module != "service/cli.py") or module in LIBRARIES


def fold(raw: str) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    """Samples, samples through each module and samples on top of each function, from
    py-spy's raw (collapsed stack) output."""
    total = 0
    through: collections.Counter[str] = collections.Counter()
    on_top: collections.Counter[str] = collections.Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [m for m in map(FRAME.match, stack.split(";")) if m]
        if not frames:
            continue
        total += int(count)
        for module in {module_of(m["path"]) for m in frames}:
            if attributed(module):
                through[module] += int(count)
        leaf = frames[-1]
        on_top[f"{leaf['function']} ({leaf['path']})"] += int(count)
    return total, through, on_top


def _record(options: Options, label: str, load: loadgen.Load, pid: int) -> Profile:
    raw = options.workdir / "profile.txt"
    seconds = options.duration_s + load.warmup_s
    sampler = subprocess.Popen(
        [
            procs.tool("py-spy"),
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--rate",
            str(RATE_HZ),
            "--duration",
            str(int(seconds)),
            "--gil",
            "--nonblocking",
            "--output",
            str(raw),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    figures = loadgen.run(load)
    _, error = sampler.communicate()
    if sampler.returncode != 0 or not raw.exists():
        raise UsageError(f"py-spy failed ({sampler.returncode}): {error.decode()[-500:]}")
    total, through, on_top = fold(raw.read_text())
    share = 1 / max(total, 1)
    return Profile(
        label,
        total,
        [(name, count * share) for name, count in through.most_common(TOP)],
        [(name, count * share) for name, count in on_top.most_common(TOP)],
        figures,
    )


def run(options: Options) -> Path:
    model = options.model_name
    rows, clients = (QUICK_ROWS, QUICK_CLIENTS) if options.quick else (ROWS, CLIENTS)
    sessions = 4 if options.quick else 64
    profiles = []
    for batching in (True, False):
        settings = {**SERVER_SETTINGS, "batching": str(batching).lower()}
        with servers.rnnserve(options.workdir, options.repository, settings) as server:
            load_of = functools.partial(
                loadgen.Load,
                duration_s=options.duration_s,
                warmup_s=options.warmup_s,
                sessions=True,
                server_pid=server.pid,
            )
            loads = {
                f"{sessions} sessions, one step per request": load_of(
                    server.target, step_request_json(model), sessions
                ),
                f"{rows} rows x {clients} clients": load_of(
                    server.target,
                    rows_request_json(model, rows),
                    clients,
                    rows=rows,
                    sequence_base=10_000_000,
                ),
            }
            for name, load in loads.items():
                label = f"{name}, batching {'on' if batching else 'off'}"
                print(f"bench: profiling {label}", file=sys.stderr)
                profiles.append(_record(options, label, load, server.pid))
    page = options.out / "profile.md"
    page.write_text(render(profiles, options.command))
    return page


def render(profiles: list[Profile], command: str) -> str:
    lines = [
        "# Where the server's time goes",
        "",
        f"Written by `{command}` (bench/profile.py): py-spy samples the server at "
        f"{RATE_HZ} Hz while k6 drives it, counting only the thread that holds the GIL: "
        "what bounds one Python process. *through* is the share of samples whose stack "
        "passes through a module of ours or a library; *on top* the share a function was "
        "the innermost Python frame (time in C extensions counts for the Python frame "
        "that called them, e.g. grpc's Cython core, and so do modules compiled with mypyc).",
    ]
    for profile in profiles:
        load = profile.load
        steps = load.get("session_steps_per_s") or load.get("rps", 0.0)
        lines += [
            "",
            f"## {profile.label}",
            "",
            f"{profile.samples:,} samples; meanwhile {steps:,.0f} session-steps/s, "
            f"p50 {load.get('p50_ms', 0.0):.2f} ms, server CPU "
            f"{load.get('server_cpu_cores', 0.0):.2f} cores.",
            "",
            "| module | through | | function | on top |",
            "|---|---|---|---|---|",
        ]
        for (module, through), (function, top) in zip(
            profile.modules, profile.functions, strict=False
        ):
            lines.append(f"| {module} | {through:.0%} | | `{function}` | {top:.1%} |")
    return "\n".join(lines) + "\n"
