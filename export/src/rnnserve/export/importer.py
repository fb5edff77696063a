"""`rnnserve import`: a user's own ONNX export into the repository, served by the recurrent
task (service/tasks/recurrent.py) under the names its graph gives its tensors.

The spec is what the server would read off the graph at load (model/describe.py: state
pairs, batch and sequence axes, the chunk check that earns `streamable`), with the hints of
a `model.json` sidecar beside the graph, plus what only the onnx package can tell: the ONNX
checker's verdict (full check) and the recurrent nodes' facts (cell, hidden size, layers,
directions). The graph is copied as `model.onnx` with the spec in its metadata and checked
as the server reads it at load, in a staging folder renamed into place only when all passed.

What torch's dynamo exporter (torch.onnx.export's default from torch 2.9) writes is taken as
it comes: weights in an external data file stay in one beside the copy
(`model.onnx.data`), and an output the graph computes at any length but declares with the
example's (describe's runs prove which) is declared dynamic in the copy. An input the export
fixed at the example's length, where the graph runs at any, is refused with the fix.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx.external_data_helper import uses_external_data

from rnnserve.export.errors import VerificationError
from rnnserve.export.metadata import set_spec
from rnnserve.export.repository import ensure_writable, next_version, staged_version
from rnnserve.model.describe import (
    QUIET,
    describe,
    open_session,
    probe_sizes,
    random_feeds,
    run,
)
from rnnserve.model.folder import check_names, read_version
from rnnserve.model.sidecar import SIDECAR_NAME, Sidecar, read_sidecar
from rnnserve.model.spec import ModelSpec, TensorSpec
from rnnserve.model.streaming import why_not_streamable
from rnnserve.protocol.errors import UsageError

GRAPH_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"  # the copy's external data, where the export had some
RECURRENT_OPS = {"RNN": "rnn", "LSTM": "lstm", "GRU": "gru"}


@dataclass(frozen=True)
class Imported:
    """A version `rnnserve import` wrote: its graph, its spec, and what of the export the
    copy changed (one line each)."""

    path: Path
    spec: ModelSpec
    changes: list[str] = field(default_factory=list)


def import_graph(
    graph: Path, root: Path, name: str, version: int | None = None, sidecar: Path | None = None
) -> Imported:
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
    external = any(uses_external_data(t) for t in model.graph.initializer)
    onnx.external_data_helper.load_external_data_for_model(model, str(graph.parent))
    try:
        spec = describe(graph, hints)
    except ValueError as error:
        raise VerificationError(f"{graph.name}: {error}") from None
    _refuse_fixed_lengths(graph, model, spec, hints)
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
    changes = _declare_dynamic(model, spec)
    set_spec(model, spec)
    ensure_writable(root)
    version = version or next_version(root, name)
    with staged_version(root, name, version) as folder:
        onnx.save(model, str(folder / GRAPH_FILE), save_as_external_data=external,
                  location=DATA_FILE)  # fmt: skip
        try:  # what the server will read of it
            check_loads(folder)
        except ValueError as error:
            raise VerificationError(f"the server refuses the import: {error}") from None
    if external:
        changes.append(f"weights kept in external data: {DATA_FILE} beside the graph")
    return Imported(root / name / str(version) / GRAPH_FILE, spec, changes)


def check_loads(folder: Path) -> None:
    """ValueError unless the version folder reads as the server reads it at load: its spec,
    its graph files, and each graph's tensor names as the spec names them."""
    spec, graphs = read_version(folder)
    for role, path in graphs.items():
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inputs = [node.name for node in session.get_inputs()]
        check_names(spec, role, inputs, [node.name for node in session.get_outputs()])


def _checked(graph: Path) -> onnx.ModelProto:
    """The graph, once onnx.checker accepts it (full check: with shape inference), as it is
    on disk (its external data not read)."""
    try:
        onnx.checker.check_model(str(graph), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        first = str(error).strip().splitlines()[0]
        raise VerificationError(f"onnx.checker refuses {graph.name}: {first}") from None
    return onnx.load(str(graph), load_external_data=False)


def _declare_dynamic(model: onnx.ModelProto, spec: ModelSpec) -> list[str]:
    """Each output axis the graph declares fixed but computes at the request's batch or
    length (the spec has -1 there: describe's runs proved it) declared dynamic in `model`;
    what was changed, one line each."""
    declared = {output.name: output for output in model.graph.output}
    changes = []
    for tensor in spec.data_outputs or []:
        dims = declared[tensor.name].type.tensor_type.shape.dim
        for axis, (size, dim) in enumerate(zip(tensor.shape, dims, strict=False)):
            if size == -1 and dim.HasField("dim_value"):
                kind = "batch" if axis == tensor.batch_axis else "sequence"
                changes.append(
                    f"output '{tensor.name}' axis {axis}: the export declares {dim.dim_value} "
                    f"(the example's), the graph computes the request's {kind}; declared dynamic"
                )
                dim.dim_param = kind  # clears dim_value: a oneof
    if changes:  # the export's shapes of the tensors on the way hold the example's length too,
        del model.graph.value_info[:]  # and ORT would read the output's off them
    return changes


def _refuse_fixed_lengths(
    graph: Path, model: onnx.ModelProto, spec: ModelSpec, hints: Sidecar | None
) -> None:
    """VerificationError for a graph whose inputs have no sequence axis, one of them fixed at
    an axis where the graph runs at any size, the size showing in an output: a length the
    export fixed at the example's (dynamic_axes= without it, or a torch.export.Dim that
    torch's dynamo exporter could not keep), which would serve requests of that length
    only. A sidecar that says the input has no sequence axis means it."""
    inputs = spec.data_inputs or []
    if any(tensor.sequence_axis is not None for tensor in inputs):
        return
    shapes = [t.shape for t in [*inputs, *(spec.data_outputs or [])]]
    rows, steps = probe_sizes(shapes + [state.shape for state in spec.states])
    for index, tensor in enumerate(inputs):
        hint = hints.inputs.get(tensor.name) if hints else None
        if hint is not None and hint.sequence_axis_given:
            continue
        for axis, size in enumerate(tensor.shape):
            if size == -1:
                continue
            shape = tuple(-1 if a == axis else s for a, s in enumerate(tensor.shape))
            probed = tensor.model_copy(update={"shape": shape, "sequence_axis": axis})
            feeds = random_feeds(
                [probed if i == index else t for i, t in enumerate(inputs)], spec.states,
                rows, steps, random.Random(0),
            )  # fmt: skip
            if any(steps in value.shape for value in _run_widened(model, tensor.name, axis, feeds)):
                raise VerificationError(
                    f"{graph.name}: input '{tensor.name}' is exported with the fixed size "
                    f"{size} at axis {axis}, yet the graph runs at any size there: export that "
                    "axis dynamic (torch.onnx.export's dynamic_shapes= with "
                    "torch.export.Dim.AUTO, or dynamic_axes= with dynamo=False), or, if its "
                    f'length is meant to be fixed, give its "sequence_axis": null in {SIDECAR_NAME}'
                )


def _run_widened(
    model: onnx.ModelProto, name: str, axis: int, feeds: dict[str, np.ndarray]
) -> list[np.ndarray]:
    """The outputs of the graph with input `name` declared dynamic at `axis`, fed `feeds`;
    none where ORT refuses the graph so widened, or the run."""
    widened = onnx.ModelProto()
    widened.CopyFrom(model)
    declared = next(node for node in widened.graph.input if node.name == name)
    declared.type.tensor_type.shape.dim[axis].dim_param = "widened"
    try:
        return list(run(open_session(widened.SerializeToString()), feeds, QUIET).values())
    except Exception:  # ORT's errors share no narrower base class
        return []


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


def describe_import(imported: Imported) -> str:
    """What `rnnserve import` prints: where the model went, its tensors, what requests it
    serves (and why not the others, in the server's words), and what the copy changed."""
    path, spec = imported.path, imported.spec
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
    states = ", its states from zeros or as sent" if spec.states else ""
    lines.append(f"  serves  whole sequences: each request on its own{states}")
    if spec.streamable:
        lines += [
            "  serves  sequences in pieces: a session per sequence_id carries the state from "
            "request to request",
            "  serves  multi-session rows: a session per batch row (control inputs "
            "sequence_id, sequence_start, sequence_end)",
        ]
    else:
        lines.append(
            "  refuses sequences in pieces and multi-session rows: model "
            f"'{path.parent.parent.name}' {why_not_streamable(spec)}"
        )
    lines += [f"  changed {change}" for change in imported.changes]
    return "\n".join(lines)


def _tensor(tensor: TensorSpec) -> str:
    sequence = "" if tensor.sequence_axis is None else f", sequence axis {tensor.sequence_axis}"
    return (
        f"{tensor.name} {tensor.datatype} {list(tensor.shape)} "
        f"(batch axis {tensor.batch_axis}{sequence})"
    )
