"""Scenario 1, the compute floor: one model call in-process, ONNX Runtime (with the server's
session options) against torch eager (same thread count), for every default sine model at
the shapes a server sees: one step, a batch of steps, one long sequence."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rnnserve.bench.options import Options
from rnnserve.bench.plots import bar_plot
from rnnserve.bench.report import Figure, ScenarioResult, environment
from rnnserve.model.folder import read_version

SHAPES = ((1, 1), (256, 1), (1, 1000))
SINE_MODELS = ("sine-rnn", "sine-lstm", "sine-gru")


def _seconds_per_call(call: Callable[[], object], budget_s: float) -> float:
    """Median time of one call, calling for about `budget_s` after one warm-up call."""
    call()
    samples: list[int] = []
    deadline = time.perf_counter() + budget_s
    while time.perf_counter() < deadline or len(samples) < 5:
        started = time.perf_counter_ns()
        call()
        samples.append(time.perf_counter_ns() - started)
    return float(np.median(samples)) / 1e9


def _ort_call(model_file: Path, feeds: dict[str, np.ndarray]) -> Callable[[], object]:
    import onnxruntime as ort

    from rnnserve.service.runtime import choose_providers, session_options
    from rnnserve.service.settings import Settings

    settings = Settings()
    session = ort.InferenceSession(
        str(model_file), session_options(settings), providers=choose_providers(settings)
    )
    return lambda: session.run(None, feeds)


def _torch_call(name: str, model_file: Path, feeds: dict[str, np.ndarray]) -> Callable[[], object]:
    """The export package's own module at the graph's sizes (weights do not change timing)."""
    import torch

    from rnnserve.export.config import config_for_name
    from rnnserve.export.tasks.sine import build_model

    spec = read_version(model_file.parent)[0]
    module = build_model(
        config_for_name(name, hidden_size=spec.hidden_size, num_layers=spec.num_layers)
    ).eval()
    tensors = [torch.from_numpy(array) for array in feeds.values()]

    def call() -> object:
        with torch.inference_mode():
            return module(*tensors)

    return call


def _feeds(model_file: Path, batch: int, seq: int) -> dict[str, np.ndarray]:
    spec = read_version(model_file.parent)[0]
    assert spec.input_size is not None  # a sine model's spec has it
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((batch, seq, spec.input_size), dtype=np.float32)}
    return feeds | spec.zero_state(batch)


def run(options: Options) -> ScenarioResult:
    import torch

    from rnnserve.service.runtime import choose_providers
    from rnnserve.service.settings import Settings

    # The server runs each ORT call on one intra-op thread; give torch the same.
    torch.set_num_threads(Settings().intra_op_threads or 1)
    provider = choose_providers(Settings())[0]
    budget_s = 0.02 if options.quick else 0.3
    figures = []
    for name in SINE_MODELS:
        model_file = options.repository / name / "1" / "model.onnx"
        spec = read_version(model_file.parent)[0]
        for batch, seq in SHAPES:
            feeds = _feeds(model_file, batch, seq)
            ort_call = _ort_call(model_file, feeds)
            torch_call = _torch_call(name, model_file, feeds)
            runs = []
            for _ in range(options.runs):
                ort_s = _seconds_per_call(ort_call, budget_s)
                torch_s = _seconds_per_call(torch_call, budget_s)
                runs.append(
                    {
                        "ort_us": ort_s * 1e6,
                        "torch_us": torch_s * 1e6,
                        "torch_over_ort": torch_s / ort_s,
                    }
                )
            figures.append(
                Figure(
                    label=f"{name} b{batch} s{seq}",
                    params={
                        "model": name,
                        "layers_x_hidden": f"{spec.num_layers}x{spec.hidden_size}",
                        "batch": batch,
                        "seq": seq,
                        "provider": provider,
                    },
                    runs=runs,
                )
            )
    bar_plot(
        options.out / "compute.png",
        "Compute floor: one call, in-process",
        "microseconds",
        {
            f.label: {"ONNX Runtime": f.median["ort_us"], "torch eager": f.median["torch_us"]}
            for f in figures
        },
    )
    return ScenarioResult(
        name="compute",
        title="1. Compute floor: ONNX Runtime against torch eager",
        description=(
            "Median time of one in-process call (no server) per model and (batch, seq); "
            "ORT with the server's session options, torch eager with as many threads, "
            "both starting from zero state."
        ),
        figures=figures,
        environment=environment(options.runs),
        command=options.command,
    )
