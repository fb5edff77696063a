"""Scenario 14, the GPU (`rnnserve bench --gpu`): steps/s and step p50 of sine-lstm and
tagger-gru at 1, 64, 1,024 and 8,192 sessions, on the CPU provider and, where ORT has it
and a GPU is visible, the CUDA provider, with device-resident state (device_state) on and
off, in the same run.

In process, through a DataPlane (no network: what is timed is the server's own step, its
state's trips included), in two modes: `multi`, every session one row of one multi-session
request per round; `streams`, every session its own sequence request per round, all at
once, as a stream per session sends them. A round steps every session one time step; the
figures are over every round that fits the duration, after a start round and a warm-up.
scripts/gpu-check.sh runs it on a GPU machine. Writes gpu.json and gpu.svg.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np

from rnnserve.bench.options import Options
from rnnserve.bench.report import Figure, Metrics, ScenarioResult, environment
from rnnserve.service.dataplane import DataPlane
from rnnserve.service.device import gpu_visible
from rnnserve.service.sessions import open_store
from rnnserve.service.settings import Settings
from rnnserve.service.types import InferRequest, Parameter, Tensor

MODELS = ("sine-lstm", "tagger-gru")
SESSIONS = (1, 64, 1024, 8192)
MODES = ("multi", "streams")
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


def providers() -> list[str]:
    """The CPU provider, and CUDA where this ORT build has it and a GPU is visible."""
    import onnxruntime as ort

    cuda = CUDA in ort.get_available_providers() and gpu_visible()
    return [CPU, CUDA] if cuda else [CPU]


def run(options: Options) -> ScenarioResult:
    figures = []
    models = [name for name in MODELS if (options.repository / name).exists()]
    budget_s = 0.05 if options.quick else options.duration_s
    for model in models:
        root = options.workdir / f"gpu-{model}"
        root.mkdir(exist_ok=True)
        if not (root / model).exists():
            (root / model).symlink_to((options.repository / model).resolve())
        for provider in providers():
            for device_state in ("off", "on"):
                figures += asyncio.run(
                    _configuration(root, model, provider, device_state, budget_s)
                )
    missing = sorted(set(MODELS) - set(models))
    notes = [f"not in {options.repository}: {', '.join(missing)}"] if missing else []
    if providers() == [CPU]:
        notes.append("no GPU here (or ORT without CUDA): the CPU provider alone")
    _plot(options.out, figures)
    return ScenarioResult(
        name="gpu",
        title="14. GPU: device-resident state, CPU and CUDA",
        description=(
            "Steps per second and step p50 (ms), in process through a DataPlane: every "
            "session one row of one request per round (multi) or its own sequence request, "
            "all at once (streams); on each provider, device_state on and off. One round "
            "steps every session one time step."
        ),
        figures=figures,
        notes=notes,
        environment=environment(1),
        command=options.command,
    )


async def _configuration(
    root: Path, model: str, provider: str, device_state: str, budget_s: float
) -> list[Figure]:
    settings = Settings(
        model_repository=root,
        providers=[provider, CPU] if provider != CPU else [CPU],
        device_state="on" if device_state == "on" else "off",
        max_batch_size=max(SESSIONS),
        max_sessions=2 * max(SESSIONS) * len(MODES),
    )
    plane = DataPlane(settings, open_store(settings))
    await plane.load()
    figures = []
    try:
        for mode in MODES:
            for sessions in SESSIONS:
                metrics = await _measure(plane, model, mode, sessions, budget_s)
                params = {
                    "model": model, "provider": provider, "device_state": device_state,
                    "mode": mode, "sessions": sessions,
                }  # fmt: skip
                short = "cuda" if provider == CUDA else "cpu"
                label = f"{model} {short} {mode} {sessions} state-{device_state}"
                figures.append(Figure(label, params, [metrics]))
    finally:
        await plane.close()
    return figures


async def _measure(
    plane: DataPlane, model: str, mode: str, sessions: int, budget_s: float
) -> Metrics:
    """Steps every session round after round for `budget_s` (at least two rounds)."""
    ids = np.arange(sessions, dtype=np.uint64) + _first_id(mode, sessions)
    samples: list[int] = []
    steps = 0
    await _round(plane, model, mode, ids, start=True, samples=[])  # the starts, untimed
    if budget_s >= 0.5:  # not in a dry run (--quick)
        await _round(plane, model, mode, ids, start=False, samples=[])  # a warm-up
    began = time.perf_counter()
    rounds = 0
    while rounds < 2 or time.perf_counter() - began < budget_s:
        await _round(plane, model, mode, ids, start=False, samples=samples)
        steps += sessions
        rounds += 1
    seconds = time.perf_counter() - began
    return {
        "steps_per_s": round(steps / seconds, 1),
        "step_p50_ms": round(float(np.median(samples)) / 1e6, 4),
        "rounds": rounds,
    }


def _first_id(mode: str, sessions: int) -> int:
    """Each (mode, size) its own sessions: none is a restart of another's."""
    return 1 + MODES.index(mode) * 10 * max(SESSIONS) + sessions


async def _round(
    plane: DataPlane, model: str, mode: str, ids: np.ndarray, *, start: bool, samples: list[int]
) -> None:
    if mode == "multi":
        began = time.perf_counter_ns()
        await plane.infer(_rows_request(model, ids, start))
        samples.append(time.perf_counter_ns() - began)
        return

    async def one(sequence_id: int) -> None:
        began = time.perf_counter_ns()
        await plane.infer(_sequence_request(model, sequence_id, start))
        samples.append(time.perf_counter_ns() - began)

    await asyncio.gather(*(one(int(sequence_id)) for sequence_id in ids))


def _data(model: str, rows: int) -> Tensor:
    if model.startswith("tagger"):
        return Tensor("tokens", "INT64", (rows, 1), np.ones((rows, 1), np.int64))
    x = np.full((rows, 1, 1), 0.5, np.float32)
    return Tensor("x", "FP32", x.shape, x)


def _outputs(model: str) -> list[str]:
    return ["logits"] if model.startswith("tagger") else ["y"]


def _rows_request(model: str, ids: np.ndarray, start: bool) -> InferRequest:
    rows = len(ids)
    data = _data(model, rows)
    controls = [
        Tensor("sequence_id", "UINT64", (rows,), ids),
        Tensor("sequence_start", "BOOL", (rows,), np.full(rows, start)),
    ]
    return InferRequest(model, inputs=[data, *controls], outputs=_outputs(model))


def _sequence_request(model: str, sequence_id: int, start: bool) -> InferRequest:
    data = _data(model, 1)
    parameters: dict[str, Parameter] = {
        "sequence_id": sequence_id, "sequence_start": start, "sequence_end": False,
    }  # fmt: skip
    return InferRequest(model, inputs=[data], outputs=_outputs(model), parameters=parameters)


def _plot(out: Path, figures: list[Figure]) -> None:
    """gpu.svg: steps/s on a log scale, a row per model, mode and size, a bar per provider
    and state. SVG written here: matplotlib (and its 26 MiB of wheels) need not travel to a
    GPU machine without network (docs/gpu.md)."""
    rows: dict[str, dict[str, float]] = {}
    for figure in figures:
        params = figure.params
        row = f"{params['model']} {params['mode']} {params['sessions']}"
        short = "cuda" if params["provider"] == CUDA else "cpu"
        rows.setdefault(row, {})[f"{short} state-{params['device_state']}"] = float(
            figure.median["steps_per_s"]
        )
    bars = sorted({bar for values in rows.values() for bar in values})
    colours = ["#4878d0", "#ee854a", "#6acc64", "#d65f5f"]
    top = max((value for values in rows.values() for value in values.values()), default=1.0)
    decades = max(1.0, np.log10(max(top, 10.0)))
    height, label_w, plot_w = 12, 230, 520
    parts = []
    y = 30
    for row, values in rows.items():
        parts.append(f'<text x="4" y="{y + len(bars) * height - 3}" font-size="11">{row}</text>')
        for index, bar in enumerate(bars):
            value = values.get(bar, 0.0)
            width = plot_w * np.log10(max(value, 1.0)) / decades
            top_y = y + index * height
            colour = colours[index % len(colours)]
            parts.append(
                f'<rect x="{label_w}" y="{top_y}" width="{width:.1f}" height="{height - 2}" '
                f'fill="{colour}"><title>{row} {bar}: {value:,.0f} steps/s</title></rect>'
            )
            parts.append(
                f'<text x="{label_w + width + 4:.1f}" y="{top_y + height - 3}" '
                f'font-size="9">{value:,.0f}</text>'
            )
        y += len(bars) * height + 8
    legend = "".join(
        f'<rect x="{label_w + 130 * i}" y="6" width="10" height="10" '
        f'fill="{colours[i % len(colours)]}"/><text x="{label_w + 130 * i + 14}" y="15" '
        f'font-size="11">{bar}</text>'
        for i, bar in enumerate(bars)
    )
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + plot_w + 80}" '
        f'height="{y + 10}" font-family="sans-serif"><title>Steps per second (in process, '
        f"log scale)</title>{legend}{''.join(parts)}</svg>\n"
    )
    (out / "gpu.svg").write_text(svg)
