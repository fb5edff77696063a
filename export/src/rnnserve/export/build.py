"""`build`: train, export and verify a set of models into a repository, and summarise."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rnnserve.export.config import DEFAULT_NAMES, config_for_name
from rnnserve.export.exporter import export_version
from rnnserve.export.repository import ensure_writable, next_version, versions
from rnnserve.export.tasks.base import count_parameters
from rnnserve.export.training import save_run, train_model
from rnnserve.protocol.errors import UsageError

# Small recurrent nets train fastest on one thread: per-step overhead dominates and the
# build machine's other cores are better left to the other processes.
TRAIN_THREADS = 1


@dataclass
class BuildResult:
    name: str
    version: int
    path: Path
    skipped: bool = False  # already present and --skip-existing given
    parameters: int = 0
    quality_name: str = ""
    quality: float = 0.0
    quality_parts: dict[str, float] = field(default_factory=dict)  # Quality.parts
    parity_error: float = 0.0
    chunk_error: float | None = None
    file_bytes: int = 0
    seconds: float = 0.0


def build_repository(
    root: Path,
    names: list[str] | None = None,
    preset: str = "default",
    seed: int = 0,
    *,
    overrides: dict[str, Any] | None = None,
    runs: Path | None = None,
    skip_existing: bool = False,
    new_version: bool = False,
    progress: bool = False,
) -> list[BuildResult]:
    """Train, export and verify each named model (default: the nine) into root.

    Writes version 1 of a model that has none; with `new_version` the next free version;
    with `skip_existing` a model that has any version is left alone. `runs`, when given,
    receives each model's checkpoint and plots.
    """
    configs = [
        config_for_name(n, preset, seed, **(overrides or {})) for n in names or DEFAULT_NAMES
    ]
    ensure_writable(root)
    if not (skip_existing or new_version):
        built = [c.name for c in configs if versions(root, c.name)]
        if built:  # say so before spending minutes on training
            raise UsageError(
                f"{', '.join(built)} already in {root}: pass --skip-existing or --new-version"
            )
    torch.set_num_threads(TRAIN_THREADS)
    results = []
    for config in configs:
        present = versions(root, config.name)
        if present and skip_existing:
            results.append(
                BuildResult(
                    config.name, present[-1], root / config.name / str(present[-1]), skipped=True
                )
            )
            continue
        version = next_version(root, config.name) if new_version else 1
        started = time.perf_counter()
        trained = train_model(config, progress)
        if runs is not None:
            save_run(trained, runs / config.name)
        exported = export_version(trained, root, version)
        results.append(
            BuildResult(
                name=config.name,
                version=version,
                path=exported.path,
                parameters=count_parameters(trained.model),
                quality_name=trained.quality_name,
                quality=trained.quality,
                quality_parts=trained.quality_parts,
                parity_error=exported.parity_error,
                chunk_error=exported.chunk_error,
                file_bytes=exported.file_bytes,
                seconds=time.perf_counter() - started,
            )
        )
    return results


def summary_table(results: list[BuildResult]) -> str:
    """One row per model; then, for the models whose quality has parts (seq2seq: each date
    format), a table of the parts, one column per model."""
    header = ("model", "version", "params", "quality", "parity err", "chunk err", "size", "time")
    rows: list[tuple[str, ...]] = [header]
    for r in results:
        if r.skipped:
            rows.append((r.name, str(r.version), "skipped: already present", "", "", "", "", ""))
            continue
        chunk = f"{r.chunk_error:.1e}" if r.chunk_error is not None else "n/a"
        rows.append(
            (
                r.name,
                str(r.version),
                f"{r.parameters:,}",
                f"{r.quality_name}={r.quality:.4g}",
                f"{r.parity_error:.1e}",
                chunk,
                f"{r.file_bytes / 1024:.0f} KiB",
                f"{r.seconds:.1f} s",
            )
        )
    tables = [rows, *parts_tables(results)]
    return "\n\n".join(layout(table) for table in tables)


def parts_tables(results: list[BuildResult]) -> list[list[tuple[str, ...]]]:
    """A table per quality name that has parts: a row per part, a column per model."""
    tables = []
    for name in dict.fromkeys(r.quality_name for r in results if r.quality_parts):
        models = [r for r in results if r.quality_name == name and r.quality_parts]
        parts = dict.fromkeys(part for r in models for part in r.quality_parts)
        header = (name, *(r.name for r in models))
        rows = [(part, *(_part(r.quality_parts.get(part)) for r in models)) for part in parts]
        tables.append([header, *rows])
    return tables


def _part(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def layout(rows: list[tuple[str, ...]]) -> str:
    """Rows as aligned columns, the first row a header underlined with dashes."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
