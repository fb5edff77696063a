"""Scenario 7: Triton's own benchmark tool, perf_analyzer, run unchanged against rnnserve:
the sequence benchmark a Triton user runs (`--sequence-length`) on every default model, its
figures medians over the runs.

The binary comes from tritonclient 2.51's wheel (the last wheel that ships it), installed
into a folder of its own (a cache, once), never beside the project's tritonclient; it needs
libb64 (Debian's libb64-0d) and the CUDA runtime library, which it loads even without a
GPU (the nvidia-cuda-runtime-cu12 wheel).

Flags beyond the sequence: what perf_analyzer cannot read from a model's metadata
(`input_arguments`), and a request count per measurement window, which bounds the run on a
busy machine where time windows may never stabilize.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from rnnserve.bench import servers
from rnnserve.bench.options import Options
from rnnserve.bench.plots import line_plot
from rnnserve.bench.report import Figure, ScenarioResult, environment
from rnnserve.model.spec import Cell
from rnnserve.protocol.errors import UsageError

VERSION = "2.51.0"
CUDA_RUNTIME = "nvidia-cuda-runtime-cu12"
CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    / "rnnserve"
    / f"perf_analyzer-{VERSION}"
)
SEQUENCE_LENGTH = 8  # requests per sequence
WINDOW_REQUESTS = 300  # requests per measurement window


@dataclass(frozen=True)
class PerfAnalyzer:
    binary: Path
    library_path: Path  # where libcudart.so.12 is

    def run(self, arguments: list[str], timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "LD_LIBRARY_PATH": str(self.library_path)}
        return subprocess.run(
            [str(self.binary), *arguments], capture_output=True, text=True, env=env,
            timeout=timeout_s,
        )  # fmt: skip


def install(target: Path = CACHE) -> PerfAnalyzer:
    """perf_analyzer from tritonclient's wheel in `target` (pip-installed there once)."""
    if ctypes.util.find_library("b64") is None:
        raise UsageError("perf_analyzer needs libb64.so.0d: apt-get install libb64-0d")
    binary = target / "bin" / "perf_analyzer"
    if not binary.is_file():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
             str(target), f"tritonclient=={VERSION}", CUDA_RUNTIME],
            check=True, capture_output=True, timeout=600,
        )  # fmt: skip
    return PerfAnalyzer(binary, target / "nvidia" / "cuda_runtime" / "lib")


# What the default models' tasks need beyond their metadata. The sine's sequence dimension is
# dynamic, and perf_analyzer refuses an input with a -1 dimension it was not given a shape
# for: `--shape` names the input and its dimensions without the batch, one step of one
# feature. The text tasks need a text their vocabulary covers (perf_analyzer generates random
# characters), read from a file: data from a file also sends only the inputs it names, where
# generated data would add the tagger's `tokens`, the alternative to `text`.
SINE_STEP = "x:1,1"
TEXTS = {"tagger": "hello", "seq2seq": "22 nov 2026"}
MODELS = tuple(f"{task}-{cell}" for task in ("sine", *TEXTS) for cell in get_args(Cell))


def input_arguments(model: str, folder: Path) -> list[str]:
    """perf_analyzer's input flags for a default model (`<task>-<cell>`); a text task's data
    file is written into `folder`."""
    task = model.split("-")[0]
    if task not in TEXTS:
        return ["--shape", SINE_STEP]
    data = folder / f"perf_analyzer-{task}.json"
    data.write_text(json.dumps({"data": [{"text": [TEXTS[task]]}]}))
    return ["--input-data", str(data)]


def sequence_arguments(
    target: str,
    model: str,
    inputs: list[str],
    concurrency: int = 1,
    window_requests: int = WINDOW_REQUESTS,
    stability_percentage: int = 100,
) -> list[str]:
    """A sequence benchmark of `model` at `target`, its inputs as `inputs` says
    (`input_arguments`, or `--shape NAME:DIMS` for a model of one's own). Three windows in a
    row within `stability_percentage` of each other end the measurement (tests, which check
    behaviour and not speed, accept any spread)."""
    return [
        "-m", model, "-u", target, "-i", "grpc",
        "--sequence-length", str(SEQUENCE_LENGTH), *inputs,
        "--concurrency-range", str(concurrency),
        "--measurement-mode", "count_windows",
        "--measurement-request-count", str(window_requests),
        "--stability-percentage", str(stability_percentage), "--max-trials", "20",
    ]  # fmt: skip


ANY_SPREAD = 100_000  # stability_percentage for runs that check behaviour, not speed


FIGURES = {
    "infer_per_s": r"Throughput: ([\d.]+) infer/sec",
    "p50_us": r"p50 latency: (\d+) usec",
    "p90_us": r"p90 latency: (\d+) usec",
    "p99_us": r"p99 latency: (\d+) usec",
    "server_us": r"Avg request latency: (\d+) usec",
}


def figures_of(output: str) -> dict[str, float]:
    """The client and server figures of perf_analyzer's last measurement."""
    found = {}
    for name, pattern in FIGURES.items():
        matches = re.findall(pattern, output)
        if matches:
            found[name] = float(matches[-1])
    return found


CONCURRENCY = (1, 4)


def run(options: Options) -> ScenarioResult:
    tool = install()
    window, spread = (50, ANY_SPREAD) if options.quick else (WINDOW_REQUESTS, 100)
    figures = []
    with servers.rnnserve(options.workdir, options.repository, {}) as server:
        for model in MODELS:
            inputs = input_arguments(model, options.workdir)
            for concurrency in CONCURRENCY:
                arguments = sequence_arguments(
                    server.target, model, inputs, concurrency, window, spread
                )
                runs = []
                for _ in range(options.runs):
                    done = tool.run(arguments)
                    if done.returncode != 0:
                        raise UsageError(
                            f"perf_analyzer {shlex.join(arguments)}: {done.stdout[-800:]}"
                        )
                    runs.append(figures_of(done.stdout))
                label = f"{model}, {concurrency} concurrent sequences"
                figures.append(Figure(label, {"model": model, "concurrency": concurrency}, runs))
    line_plot(
        options.out / "perf_analyzer.png",
        "perf_analyzer: p50 latency of a sequence's request",
        "concurrent sequences",
        "p50 latency (µs)",
        {
            model: [
                (f.params["concurrency"], f.median["p50_us"])
                for f in figures
                if f.params["model"] == model
            ]
            for model in MODELS
        },
    )
    return ScenarioResult(
        name="perf_analyzer",
        title="7. perf_analyzer, Triton's benchmark tool, unchanged",
        description=(
            f"perf_analyzer {VERSION} (tritonclient's wheel) runs Triton's sequence benchmark "
            f"on every default model: sequences of {SEQUENCE_LENGTH} requests, the sequence "
            "id, start and end as Triton's sequence parameters, the state kept by the server; "
            f"a sine request is one step (`--shape {SINE_STEP}` gives the dynamic sequence "
            "length), a tagger's the text "
            f"{TEXTS['tagger']!r} and a seq2seq's {TEXTS['seq2seq']!r} (`--input-data`), "
            f"windows of {window} requests bound the run. "
            "Latencies are perf_analyzer's (µs), `server_us` the "
            "server's own request latency from ModelStatistics. perf_analyzer stops at the "
            "first failed request: every figure is of requests all answered."
        ),
        figures=figures,
        environment=environment(options.runs),
        command=options.command,
        notes=[
            "Reproduce by hand: `perf_analyzer -m sine-lstm -u HOST:8001 -i grpc "
            f"--sequence-length 8 --shape {SINE_STEP}`; a tagger or seq2seq with "
            '`--input-data FILE`, FILE holding `{"data": [{"text": ["hello"]}]}`; '
            "add `--measurement-mode count_windows --measurement-request-count 300` where "
            "time windows do not stabilize."
        ],
    )
