"""Export a trained model as one verified repository version."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rnnserve.export.errors import VerificationError
from rnnserve.export.metadata import write_spec
from rnnserve.export.onnx_graphs import export_graph
from rnnserve.export.repository import staged_version
from rnnserve.export.tasks import task_module
from rnnserve.export.tasks.base import count_parameters
from rnnserve.export.training import TrainedModel
from rnnserve.export.verify import check_graph
from rnnserve.model.spec import ModelSpec


@dataclass
class ExportResult:
    path: Path
    spec: ModelSpec
    parity_error: float
    chunk_error: float | None  # None: no one-way sequence graph (bidirectional tagger)
    file_bytes: int


def check_quality(trained: TrainedModel) -> None:
    if not task_module(trained.config.task).quality_ok(trained.quality):
        raise VerificationError(
            f"quality check failed for {trained.config.name}: {trained.quality_name} is "
            f"{trained.quality:.4g}"
        )


def export_version(trained: TrainedModel, root: Path, version: int) -> ExportResult:
    """Write root/<name>/<version>/ from `trained`, or raise VerificationError and leave
    the repository as it was."""
    config = trained.config
    task = task_module(config.task)
    check_quality(trained)
    graphs = task.graphs(trained.model, config)
    with staged_version(root, config.name, version) as folder:
        reports = {}
        for graph in graphs:
            export_graph(graph, folder / graph.file_name)
            reports[graph.role] = check_graph(graph, folder / graph.file_name)
        task.verify(trained.model, folder, config)
        parity = max(r.parity_error for r in reports.values())
        chunks = [r.chunk_error for r in reports.values() if r.chunk_error is not None]
        chunk = max(chunks) if chunks else None
        spec = ModelSpec(
            task=config.task,
            cell=config.cell,
            num_layers=config.num_layers,
            hidden_size=config.hidden_size,
            graphs={g.role: g.file_name for g in graphs},
            graph_inputs={g.role: g.input_names for g in graphs},
            graph_outputs={g.role: g.output_names for g in graphs},
            training={
                trained.quality_name: trained.quality,
                **{
                    f"{trained.quality_name}[{part}]": value
                    for part, value in trained.quality_parts.items()
                },
                "parity_error": parity,
                "parameters": count_parameters(trained.model),
                "seed": config.seed,
                "epochs": config.epochs,
                "train_seconds": round(trained.train_seconds, 2),
                # Omitted where no graph can be fed in chunks (bidirectional tagger).
                **({"chunk_error": chunk} if chunk is not None else {}),
            },
            **task.spec_fields(config),
        )
        for graph in graphs:
            write_spec(folder / graph.file_name, spec)
        size = sum(f.stat().st_size for f in folder.iterdir())
    return ExportResult(root / config.name / str(version), spec, parity, chunk, size)
