"""`rnnserve bench --profile`: where the server's CPU goes under the goal loads.

perf samples every thread of the server process (its event loop, grpc's poller, ONNX
Runtime's) at RATE_HZ of CPU time while k6 drives it with the goal loads of scenario 9 (one
step per ModelInfer from 64 sessions, a ModelStreamInfer stream per session) and of
multi-session requests, against the server as it runs by default; the echo floor is
sampled under the same one-step loads. Each sample counts for the native code it was in:
the interpreter, the modules compiled with mypyc, grpc's Cython core, protobuf, ONNX
Runtime, numpy and the kernel, each its own shared object, each function its own symbol.
A Python-level sampler (py-spy) cannot tell them apart once the hot path is compiled: it
shows their time on the interpreted caller. profile.md gives, for each load, the server
CPU a request spends in each part, beside the floor's, and the functions most often on top.
"""

from __future__ import annotations

import collections
import functools
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rnnserve.bench import loadgen, servers
from rnnserve.bench.multi_session import CLIENTS, QUICK_CLIENTS, QUICK_ROWS, ROWS
from rnnserve.bench.options import Options
from rnnserve.bench.payloads import rows_request_json, step_request_json
from rnnserve.bench.sessions import SERVER_SETTINGS
from rnnserve.protocol.errors import UsageError

TOP = 15
RATE_HZ = 997  # samples a second of CPU time: prime, so as not to beat with a periodic timer
OTHER = "other"

# A shared object's part, by what its file name starts with; the first match names it.
PARTS = (
    ("[kernel", "kernel"),
    ("[vdso]", "kernel"),
    ("compiled__mypyc", "rnnserve, compiled"),
    ("libpython", "Python"),
    ("python3", "Python"),
    ("_asyncio.", "Python"),
    ("cygrpc", "grpc"),
    ("loop.cpython", "uvloop"),
    ("_message.", "protobuf"),
    ("onnxruntime", "ONNX Runtime"),
    ("libonnxruntime", "ONNX Runtime"),
    ("_multiarray", "numpy"),
    ("libscipy_openblas", "numpy"),
    ("libc.so", "C and C++ runtimes"),
    ("libm.so", "C and C++ runtimes"),
    ("libstdc++", "C and C++ runtimes"),
    ("libgcc", "C and C++ runtimes"),
    ("ld-linux", "C and C++ runtimes"),
)


@dataclass
class Profile:
    samples: int
    parts: collections.Counter[str]  # samples in each part
    functions: list[tuple[str, str, int]]  # symbol, its part, samples on top of it
    load: dict[str, float]  # what k6 measured meanwhile

    def us_per_request(self, part: str) -> float:
        """The server CPU a request spent in `part`."""
        cpu_us = self.load.get("server_cpu_us_per_request", 0.0)
        return cpu_us * self.parts[part] / max(self.samples, 1)


def part_of(dso: str) -> str:
    """The part a shared object belongs to (OTHER for those of no part named here)."""
    return next((part for prefix, part in PARTS if dso.startswith(prefix)), OTHER)


def fold(report: str) -> tuple[int, collections.Counter[str], collections.Counter[tuple[str, str]]]:
    """Samples, samples in each part and samples on top of each symbol with its part, from
    `perf report --sort dso,sym -F sample,dso,sym --field-separator=<tab>` lines."""
    total = 0
    parts: collections.Counter[str] = collections.Counter()
    symbols: collections.Counter[tuple[str, str]] = collections.Counter()
    for line in report.splitlines():
        fields = line.split("\t")
        if len(fields) != 3 or not fields[0].strip().isdigit():
            continue  # perf's comments and headers
        samples, dso, symbol = int(fields[0]), fields[1].strip(), fields[2].strip()
        part = part_of(dso)
        total += samples
        parts[part] += samples
        # "[.] name" in user space, "[k] name" in the kernel: the name is what one looks up.
        symbols[symbol.split("] ", 1)[-1], part] += samples
    return total, parts, symbols


def _perf(*args: str) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(["perf", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise UsageError(
            "perf not found: install it (Debian: apt-get install linux-perf)"
        ) from None


def _finished(process: subprocess.Popen[bytes], what: str) -> bytes:
    out, error = process.communicate()
    if process.returncode != 0:
        raise UsageError(f"perf {what} failed ({process.returncode}): {error.decode()[-500:]}")
    return out


def _record(
    options: Options,
    load: Callable[..., loadgen.Load],
    server: servers.Running,
    sequence_base: int = 1,
) -> Profile:
    """`load` driven against `server` while perf samples it."""
    data = options.workdir / "perf.data"
    driven = load(
        target=server.target, duration_s=options.duration_s, warmup_s=options.warmup_s,
        sessions=True, server_pid=server.pid, sequence_base=sequence_base,
    )  # fmt: skip
    sampler = _perf(
        "record", "-e", "cpu-clock", "-F", str(RATE_HZ), "-p", str(server.pid),
        "-o", str(data), "--", "sleep", f"{options.duration_s + options.warmup_s:g}",
    )  # fmt: skip
    figures = loadgen.run(driven)
    _finished(sampler, "record")
    report = _finished(
        _perf(
            "report", "-i", str(data), "--stdio", "--sort", "dso,sym", "-F", "sample,dso,sym",
            "--field-separator=\t",
        ),
        "report",
    )  # fmt: skip
    total, parts, symbols = fold(report.decode(errors="replace"))
    top = [(name, part, count) for (name, part), count in symbols.most_common(TOP)]
    return Profile(total, parts, top, figures)


def run(options: Options) -> Path:
    model = options.model_name
    rows, clients = (QUICK_ROWS, QUICK_CLIENTS) if options.quick else (ROWS, CLIENTS)
    sessions = 4 if options.quick else 64
    step = step_request_json(model)
    one_step = f"{sessions} sessions, one step per ModelInfer"
    streams = f"{sessions} streams, one step per message"
    # Each load as a function of its server; the one-step loads are the floor's too.
    loads = {
        one_step: functools.partial(loadgen.Load, request=step, vus=sessions),
        streams: functools.partial(loadgen.Load, request=step, vus=sessions, stream=True),
        f"{rows} rows x {clients} clients: each ModelInfer steps {rows} sessions": (
            functools.partial(
                loadgen.Load, request=rows_request_json(model, rows), vus=clients, rows=rows
            )
        ),
    }
    sampled: dict[str, Profile] = {}
    floors: dict[str, Profile] = {}
    with servers.rnnserve(options.workdir, options.repository, SERVER_SETTINGS) as server:
        for index, (label, load) in enumerate(loads.items()):
            print(f"bench: profiling {label}", file=sys.stderr)
            sampled[label] = _record(options, load, server, sequence_base=1 + index * 10_000_000)
    with servers.echo_server(options.workdir) as echo:
        for label in (one_step, streams):
            print(f"bench: profiling the echo floor, {label}", file=sys.stderr)
            floors[label] = _record(options, loads[label], echo)
    page = options.out / "profile.md"
    page.write_text(
        render({label: (sampled[label], floors.get(label)) for label in loads}, options.command)
    )
    return page


def render(profiles: dict[str, tuple[Profile, Profile | None]], command: str) -> str:
    lines = [
        "# Where the server's CPU goes",
        "",
        f"Written by `{command}` (bench/profile.py): perf samples every thread of the server "
        f"(`rnnserve serve` as it runs by default) at {RATE_HZ} Hz of CPU time while k6 drives "
        "it, and the echo floor's under the same one-step loads. Each sample counts for the "
        "native code it was in: the interpreter (and so every module of ours not compiled), "
        "our modules compiled with mypyc, grpc's Cython core and C core, the kernel's work for "
        "the server's threads. A part's figure is the server CPU a request spent in it: its "
        "share of the samples times the CPU a request cost while they were taken.",
    ]
    for label, (profile, floor) in profiles.items():
        lines += ["", f"## {label}", "", _measured("rnnserve", profile)]
        if floor is not None:
            lines.append(_measured("The echo floor", floor))
        lines += [
            "",
            "| part | rnnserve, µs a request | the echo floor's |",
            "|---|---|---|",
        ]
        for part, _ in profile.parts.most_common():
            floor_us = f"{floor.us_per_request(part):,.1f}" if floor is not None else ""
            lines.append(f"| {part} | {profile.us_per_request(part):,.1f} | {floor_us} |")
        lines += [
            "",
            "| rnnserve's functions most often on top | part | samples |",
            "|---|---|---|",
        ]
        lines += [
            f"| `{name}` | {part} | {count / max(profile.samples, 1):.1%} |"
            for name, part, count in profile.functions
        ]
    return "\n".join(lines) + "\n"


def _measured(server: str, profile: Profile) -> str:
    load = profile.load
    steps = load.get("session_steps_per_s") or load.get("rps", 0.0)
    return (
        f"{server}: {profile.samples:,} samples; meanwhile {steps:,.0f} session-steps/s, "
        f"p50 {load.get('p50_ms', 0.0):.2f} ms, server CPU {load.get('server_cpu_cores', 0.0):.2f}"
        f" cores, {load.get('server_cpu_us_per_request', 0.0):,.0f} µs a request."
    )
