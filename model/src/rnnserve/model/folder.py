"""A version folder of the model repository, as the server loads it and `rnnserve import`
checks it: the spec its first graph carries (or, for a lone graph without one, what the
graph says of itself with the sidecar's hints), the graph files the spec names, and those
graphs' tensor names against the spec."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnxruntime as ort

from rnnserve.model.describe import describe
from rnnserve.model.sidecar import SIDECAR_NAME, Sidecar, read_sidecar
from rnnserve.model.spec import METADATA_KEY, ModelSpec


def read_spec(graph: Path) -> ModelSpec | None:
    """The ModelSpec stored in a graph's ONNX metadata, None when it has none. ORT reads it
    (the server does not depend on the onnx package); the session is thrown away once the
    spec names the graphs."""
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in metadata:
        return None
    return ModelSpec.from_json(metadata[METADATA_KEY])


def read_version(folder: Path, sidecar: Sidecar | None = None) -> tuple[ModelSpec, dict[str, Path]]:
    """The spec of one version folder and its graph files by role; ValueError when it is
    broken. A graph without a spec is described from what it says, the sidecar beside it (or
    else `sidecar`, the model's) supplying the rest."""
    onnx_files = sorted(folder.glob("*.onnx"))
    if not onnx_files:
        raise ValueError("no .onnx file in the version folder")
    spec = read_spec(onnx_files[0])
    if spec is None:
        if len(onnx_files) > 1:
            raise ValueError(
                f"{onnx_files[0].name} has no '{METADATA_KEY}' metadata, and the folder holds "
                f"{len(onnx_files)} graphs: a graph served without it is the only one"
            )
        spec = describe(onnx_files[0], read_sidecar(folder / SIDECAR_NAME) or sidecar)
    graph_files = {role: folder / file for role, file in spec.graphs.items()}
    for role, path in graph_files.items():
        if not path.is_file():
            raise ValueError(f"graph '{role}' file {path.name} is missing")
    return spec, graph_files


def check_names(spec: ModelSpec, role: str, inputs: Sequence[str], outputs: Sequence[str]) -> None:
    """ValueError unless graph `role` has the inputs and outputs its spec names, in order."""
    for kind, found, expected in (
        ("inputs", list(inputs), spec.graph_inputs[role]),
        ("outputs", list(outputs), spec.graph_outputs[role]),
    ):
        if found != expected:
            raise ValueError(f"graph '{role}' has {kind} {found}; its spec says {expected}")
