"""Soak (`rnnserve bench --soak`): many sequences stepped at once for a long while, every
answer checked, resident memory watched.

SESSIONS client threads each step sequences of the LSTM sine model through the client
library's SequenceSession (every step with its offset, CHUNK time steps per request), one
sequence after another, for `--soak-seconds`; each piece answered is compared with the
same whole sequence answered at once. Reported: steps and sequences answered, wrong
answers, refusals, and the server's resident memory at the start (after its first
sequences), its peak (sampled every SAMPLE_S) and at the end (after the load), with the
growth from start to end.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import numpy as np

from rnnserve.bench import procs, servers
from rnnserve.bench.options import Options
from rnnserve.bench.plots import line_plot
from rnnserve.bench.report import Figure, ScenarioResult, environment
from rnnserve.bench.sessions import SERVER_SETTINGS
from rnnserve.client.client import RnnClient
from rnnserve.client.errors import InferenceError
from rnnserve.client.sequence import SequenceSession

SESSIONS = 200
QUICK_SESSIONS = 8
QUICK_SECONDS = 2.0
LENGTH = 60  # time steps of every sequence
CHUNK = 3  # time steps per request
INPUTS = 16  # distinct sequences, each with its reference, shared round robin
TOLERANCE = 1e-5  # pieces against the whole: the same kernels, the state carried exactly
SAMPLE_S = 0.5
SETTLE_S = 1.0  # after the load, for the server to finish and the allocator to settle


class _Tally:
    """What the client threads saw, under one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.steps = self.sequences = self.wrong = 0
        self.refused: Counter[str] = Counter()


def run(options: Options) -> ScenarioResult:
    sessions = QUICK_SESSIONS if options.quick else SESSIONS
    seconds = QUICK_SECONDS if options.quick else options.soak_s
    figures: list[dict[str, float]] = []
    samples: list[tuple[float, float]] = []
    for _ in range(options.runs):
        with servers.rnnserve(options.workdir, options.repository, SERVER_SETTINGS) as server:
            figure, samples = _soak(server.target, server.pid, sessions, seconds)
            figures.append(figure)
    line_plot(
        options.out / "soak.png",
        f"Resident memory under {sessions} sequences stepped at once",
        "seconds",
        "RSS (MiB)",
        {"rnnserve": samples},
    )
    return ScenarioResult(
        name="soak",
        title="11. Soak: sequences stepped at once, every answer checked",
        description=(
            f"{sessions} client threads each step sequences of {options.model_name} ("
            f"{LENGTH} time steps, {CHUNK} per request, each step with its sequence_offset) "
            f"one after another for {seconds:g} s through one server process (memory state "
            "store); every piece answered is compared with the whole sequence answered at "
            "once. Resident memory: at the start (after the first round of sequences), its "
            f"peak (sampled every {SAMPLE_S:g} s) and at the end, {SETTLE_S:g} s after the "
            "load; growth is end over start."
        ),
        figures=[Figure(f"{sessions} sequences, {seconds:g} s", {"sessions": sessions}, figures)],
        environment=environment(options.runs),
        command=options.command,
    )


def _soak(
    target: str, pid: int, sessions: int, seconds: float
) -> tuple[dict[str, float], list[tuple[float, float]]]:
    rng = np.random.default_rng(0)
    xs = [rng.normal(0, 1, LENGTH).astype(np.float32) for _ in range(INPUTS)]
    tally, stop, warm = _Tally(), threading.Event(), threading.Barrier(sessions + 1)
    with RnnClient(target, timeout_s=60) as client:
        wholes = [client.infer("sine-lstm", {"x": x[None, :, None]}, ["y"])["y"] for x in xs]
        threads = [
            threading.Thread(
                target=_client, args=(client, index, xs, wholes, tally, stop, warm), daemon=True
            )
            for index in range(sessions)
        ]
        for thread in threads:
            thread.start()
        warm.wait(timeout=300)  # every client has answered its first sequence
        began = time.monotonic()
        start_rss = peak = procs.rss_bytes(pid)
        samples = [(0.0, start_rss / 2**20)]
        while (elapsed := time.monotonic() - began) < seconds:
            time.sleep(SAMPLE_S)
            rss = procs.rss_bytes(pid)
            peak = max(peak, rss)
            samples.append((elapsed, rss / 2**20))
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
        steps_per_s = tally.steps / (time.monotonic() - began)
    time.sleep(SETTLE_S)
    end_rss = procs.rss_bytes(pid)
    figure = {
        "seconds": seconds,
        "steps": float(tally.steps),
        "steps_per_s": steps_per_s,
        "sequences": float(tally.sequences),
        "wrong": float(tally.wrong),
        "errors": float(sum(tally.refused.values())),
        "rss_start_mib": start_rss / 2**20,
        "rss_peak_mib": peak / 2**20,
        "rss_end_mib": end_rss / 2**20,
        "rss_growth_pct": 100 * (end_rss - start_rss) / start_rss,
    }
    for code, count in tally.refused.items():
        figure[f"errors_{code}"] = float(count)
    return figure, samples


def _client(
    client: RnnClient,
    index: int,
    xs: list[np.ndarray],
    wholes: list[np.ndarray],
    tally: _Tally,
    stop: threading.Event,
    warm: threading.Barrier,
) -> None:
    run = 0
    while run == 0 or not stop.is_set():
        run += 1
        which = (index + run) % len(xs)
        with SequenceSession(client, "sine-lstm", f"soak-{index}-{run}") as session:
            try:
                pieces = [
                    session.step(
                        {"x": xs[which][None, begin : begin + CHUNK, None]},
                        ["y"],
                        end=begin + CHUNK == LENGTH,
                    )["y"]
                    for begin in range(0, LENGTH, CHUNK)
                ]
            except InferenceError as error:
                with tally.lock:
                    tally.refused[error.code] += 1
                continue
            finally:
                if run == 1:
                    warm.wait(timeout=300)
        right = np.allclose(np.concatenate(pieces, axis=1), wholes[which], rtol=0, atol=TOLERANCE)
        with tally.lock:
            tally.steps += LENGTH // CHUNK
            tally.sequences += 1
            tally.wrong += int(not right)
