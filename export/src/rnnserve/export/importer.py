"""`rnnserve import`: a user's own ONNX export into the repository, served by the recurrent
task (service/tasks/recurrent.py) under the names its graph gives its tensors.

The spec is what the server would read off the graph at load (model/describe.py: state
pairs, batch and sequence axes, the chunk check that earns `streamable`), with the hints of
a `model.json` sidecar beside the graph, plus what only the onnx package can tell: the ONNX
checker's verdict (full check) and the recurrent nodes' facts (cell, hidden size, layers,
directions). The graph is copied as `model.onnx` with the spec in its metadata and checked
as the server reads it at load, in a staging folder renamed into place only when all passed.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import onnx
import onnxruntime as ort

from rnnserve.export.errors import VerificationError
from rnnserve.export.metadata import write_spec
from rnnserve.export.repository import ensure_writable, next_version, staged_version
from rnnserve.model.describe import describe
from rnnserve.model.folder import check_names, read_version
from rnnserve.model.sidecar import SIDECAR_NAME, read_sidecar
from rnnserve.model.spec import ModelSpec, TensorSpec
from rnnserve.protocol.errors import UsageError

GRAPH_FILE = "model.onnx"
RECURRENT_OPS = {"RNN": "rnn", "LSTM": "lstm", "GRU": "gru"}


def import_graph(
    graph: Path, root: Path, name: str, version: int | None = None, sidecar: Path | None = None
) -> tuple[Path, ModelSpec]:
    """Write `root/<name>/<version>/model.onnx` (version: the next free one by default);
    UsageError for what the user typed, VerificationError when the graph cannot serve."""
    if not graph.is_file():
        raise UsageError(f"{graph} is not a file")
    if not name or name != Path(name).name or name.startswith("."):
        raise UsageError(f"--name {name!r} is not a folder name")
    if version is not None and version < 1:
        raise UsageError(f"--version must be at least 1, got {version}")
    try:
        hints = read_sidecar(sidecar or graph.with_name(SIDECAR_NAME))
    except ValueError as error:
        raise UsageError(str(error)) from None
    if sidecar is not None and hints is None:
        raise UsageError(f"--sidecar {sidecar} is not a file")
    if hints is not None and hints.version_policy is not None:
        raise UsageError(
            f"{sidecar or graph.with_name(SIDECAR_NAME)}: version_policy belongs in the "
            f"model's folder ({root / name / SIDECAR_NAME}), not beside a graph"
        )
    model = _checked(graph)
    try:
        spec = describe(graph, hints)
    except ValueError as error:
        raise VerificationError(f"{graph.name}: {error}") from None
    facts = recurrent_facts(model)
    spec = ModelSpec.model_validate(
        {
            **spec.model_dump(),
            **facts,
            "streamable": spec.streamable and facts.get("num_directions", 1) == 1,
            "graphs": {"model": GRAPH_FILE},
            "training": {**spec.training, "imported_from": graph.name},
        }
    )
    ensure_writable(root)
    version = version or next_version(root, name)
    with staged_version(root, name, version) as folder:
        shutil.copyfile(graph, folder / GRAPH_FILE)
        write_spec(folder / GRAPH_FILE, spec)
        try:  # what the server will read of it
            check_loads(folder)
        except ValueError as error:
            raise VerificationError(f"the server refuses the import: {error}") from None
    return root / name / str(version) / GRAPH_FILE, spec


def check_loads(folder: Path) -> None:
    """ValueError unless the version folder reads as the server reads it at load: its spec,
    its graph files, and each graph's tensor names as the spec names them."""
    spec, graphs = read_version(folder)
    for role, path in graphs.items():
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inputs = [node.name for node in session.get_inputs()]
        check_names(spec, role, inputs, [node.name for node in session.get_outputs()])


def _checked(graph: Path) -> onnx.ModelProto:
    """The graph, once onnx.checker accepts it (full check: with shape inference)."""
    try:
        onnx.checker.check_model(str(graph), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        first = str(error).strip().splitlines()[0]
        raise VerificationError(f"onnx.checker refuses {graph.name}: {first}") from None
    model = onnx.load(str(graph), load_external_data=False)
    if any(onnx.external_data_helper.uses_external_data(t) for t in model.graph.initializer):
        raise VerificationError(
            f"{graph.name} keeps its weights in external data files; save it as one file"
        )
    return model


def recurrent_facts(model: onnx.ModelProto) -> dict[str, object]:
    """What the graph's RNN, LSTM and GRU nodes say: the cell, hidden size and layer count
    when every node agrees (torch writes one node per layer), and whether any direction is
    bidirectional."""
    nodes = [node for node in model.graph.node if node.op_type in RECURRENT_OPS]
    if not nodes:
        return {}
    attributes = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in nodes]
    bidirectional = any(a.get("direction") == b"bidirectional" for a in attributes)
    facts: dict[str, object] = {"num_directions": 2 if bidirectional else 1}
    kinds = Counter(node.op_type for node in nodes)
    hidden_sizes = {a.get("hidden_size") for a in attributes}
    if len(kinds) == 1 and len(hidden_sizes) == 1 and None not in hidden_sizes:
        facts |= {
            "cell": RECURRENT_OPS[nodes[0].op_type],
            "num_layers": len(nodes),
            "hidden_size": hidden_sizes.pop(),
        }
    return facts


def describe_import(path: Path, spec: ModelSpec) -> str:
    """What `rnnserve import` prints: where the model went and how it is served."""
    chunk = spec.training.get("chunk_error")
    streaming = (
        "streamable (sessions carry its state)"
        if spec.streamable
        else "not streamable (whole sequences only)"
    )
    if isinstance(chunk, float):
        streaming += f", chunked run deviates {chunk:.1e} from whole"
    lines = [f"imported {path}: {streaming}"]
    lines += [f"  input   {_tensor(t)}" for t in spec.data_inputs or []]
    lines += [f"  output  {_tensor(t)}" for t in spec.data_outputs or []]
    lines += [
        f"  state   {s.input} -> {s.output} FP32 {list(s.shape)} (batch axis {s.batch_axis})"
        for s in spec.states
    ]
    return "\n".join(lines)


def _tensor(tensor: TensorSpec) -> str:
    sequence = "" if tensor.sequence_axis is None else f", sequence axis {tensor.sequence_axis}"
    return (
        f"{tensor.name} {tensor.datatype} {list(tensor.shape)} "
        f"(batch axis {tensor.batch_axis}{sequence})"
    )
