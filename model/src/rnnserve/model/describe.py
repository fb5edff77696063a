"""A ModelSpec for a graph that carries none, read with ONNX Runtime alone (the server has
neither torch nor the onnx package), for the recurrent task (service/tasks/recurrent.py).

1. Signature: every input and output, its datatype and shape, as ORT reports them.
2. States: an FP32 input pairs with an output of the same shape whose only dynamic
   dimension is the batch: the shapes torch's exporter writes for the h and c of RNN, LSTM
   and GRU. Inputs and outputs of one shape pair in graph order (h0 with hn, c0 with cn).
   The sidecar's `states` replaces the matching. The other tensors are data.
3. Axes: a data input with one dynamic dimension has its batch there; with two (batch and
   sequence, in either order) the graph is run both ways, and the way ORT accepts with the
   states' batch wins. That run's batch and sequence sizes differ from every fixed
   dimension of the graph; a second run takes the first's sequence size as its batch, and
   SHORT steps. The outputs' axes are read off the two runs: an axis that follows the batch
   (or the sequence) from one run to the other is that axis, even where the graph declares
   it fixed (torch's dynamo exporter declares the example's length in outputs it computes
   at any length). A graph that fails the short run computes a length fixed at export
   (the dynamo exporter unrolls nn.RNN over the example's steps). The sidecar's hints come
   first.
4. Ids: an integer data input that indexes an embedding (a Gather on an initializer) gets
   the embedding's rows (model/embeddings.py), so that the server refuses an id out of
   them naming the input, rather than hear ORT refuse it naming a node.
5. Streaming is earned: a sequence fed in random chunks, the state carried from chunk to
   chunk, must give the whole run's outputs and final states (CHUNK_STEPS steps, within
   TOLERANCE). The measured deviation goes into the spec as `training.chunk_error`.

What cannot be decided raises ValueError saying what to write in the sidecar.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from rnnserve.model.embeddings import embedding_rows
from rnnserve.model.sidecar import AxesHint, Sidecar
from rnnserve.model.spec import ModelSpec, StateSpec, TensorSpec
from rnnserve.protocol.codec import DTYPES

TASK = "recurrent"
ROLE = "model"
TOLERANCE = 1e-5
CHUNK_ROWS, CHUNK_STEPS, LONGEST_CHUNK = 2, 96, 24
SIZES = (3, 5, 7, 11, 13, 17, 19, 23, 29, 31)  # probe sizes: the first two unlike any fixed dim
SHORT = 2  # the second run's steps: fewer than any example a length was traced from
# What fixes a graph that computes a length fixed at export, its inputs dynamic.
REEXPORT = (
    "export it with dynamo=False (torch 2.13's dynamo exporter fixes the example's length in "
    "an nn.RNN, and in a sequence-first nn.GRU or nn.LSTM)"
)
ORT_DATATYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


@dataclass(frozen=True)
class GraphTensor:
    """An input or output as ORT reports it: a dynamic dimension is -1 in `shape`."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def dynamic(self) -> list[int]:
        return [axis for axis, size in enumerate(self.shape) if size == -1]


def deviation(actual: np.ndarray, expected: np.ndarray) -> float:
    """Largest |actual - expected| / max(1, |expected|) (0 for empty tensors): absolute for
    values up to 1, relative above, as float32 carries about seven significant digits."""
    expected = np.asarray(expected, np.float64)
    scale = np.maximum(1.0, np.abs(expected))
    return float((np.abs(np.asarray(actual, np.float64) - expected) / scale).max(initial=0.0))


def open_session(graph: Path | bytes) -> ort.InferenceSession:
    """A session of the graph at a path, or of a serialized graph."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    source = graph if isinstance(graph, bytes) else str(graph)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


# Probing runs the graph with layouts ORT may refuse: those refusals are answers, not errors.
QUIET = ort.RunOptions()
QUIET.log_severity_level = 4


def signature(session: ort.InferenceSession) -> tuple[list[GraphTensor], list[GraphTensor]]:
    """The graph's inputs and outputs; ValueError for a tensor the server cannot serve."""

    def tensor(node: ort.NodeArg, kind: str) -> GraphTensor:
        datatype = ORT_DATATYPES.get(node.type)
        if datatype is None:
            raise ValueError(f"{kind} '{node.name}' has type {node.type}; expected a tensor")
        if node.shape is None:
            raise ValueError(f"{kind} '{node.name}' has no known rank; the graph must declare it")
        shape = tuple(size if isinstance(size, int) and size > 0 else -1 for size in node.shape)
        return GraphTensor(node.name, datatype, shape)

    inputs = [tensor(node, "input") for node in session.get_inputs()]
    outputs = [tensor(node, "output") for node in session.get_outputs()]
    return inputs, outputs


def describe(path: Path, sidecar: Sidecar | None = None) -> ModelSpec:
    """The spec of the graph at `path` (a recurrent task's single graph, role "model")."""
    hints = sidecar or Sidecar()
    session = open_session(path)
    inputs, outputs = signature(session)
    _check_hint_names(hints, inputs, outputs)
    states = find_states(inputs, outputs, hints)
    state_names = {name for state in states for name in (state.input, state.output)}
    data_in = [t for t in inputs if t.name not in state_names]
    data_out = [t for t in outputs if t.name not in state_names]
    if not data_in:
        raise ValueError(
            f"every input ({', '.join(t.name for t in inputs)}) pairs with an output as a "
            "state, which leaves no data input: name the states in model.json's 'states'"
        )
    for tensor in data_in:
        if tensor.datatype == "BYTES":
            raise ValueError(
                f"input '{tensor.name}' is a string tensor; the recurrent task serves "
                "numeric tensors"
            )
    data_inputs, data_outputs = find_axes(session, data_in, data_out, states, hints)
    data_inputs = with_embedding_rows(data_inputs, path)
    chunk_error = check_chunks(session, data_inputs, data_outputs, states) if states else None
    return ModelSpec(
        task=TASK,
        graphs={ROLE: path.name},
        graph_inputs={ROLE: [t.name for t in inputs]},
        graph_outputs={ROLE: [t.name for t in outputs]},
        data_inputs=data_inputs,
        data_outputs=data_outputs,
        state_tensors=states,
        streamable=chunk_error is not None and chunk_error <= TOLERANCE,
        training={} if chunk_error is None else {"chunk_error": chunk_error},
    )


def with_embedding_rows(inputs: list[TensorSpec], path: Path) -> list[TensorSpec]:
    """The inputs, each integer one that indexes an embedding with its rows."""
    if not any(DTYPES[t.datatype].kind in "iu" for t in inputs):
        return inputs
    rows = embedding_rows(path.read_bytes())
    return [
        t.model_copy(update={"embedding_rows": rows[t.name]}) if t.name in rows else t
        for t in inputs
    ]


def _check_hint_names(
    hints: Sidecar, inputs: list[GraphTensor], outputs: list[GraphTensor]
) -> None:
    for kind, named, tensors in (
        ("inputs", hints.inputs, inputs),
        ("outputs", hints.outputs, outputs),
        ("states", {h.input: h for h in hints.states or []}, inputs),
        ("states", {h.output: h for h in hints.states or []}, outputs),
    ):
        known = [t.name for t in tensors]
        for name in named:
            if name not in known:
                raise ValueError(
                    f"model.json {kind} names '{name}', which the graph lacks; its "
                    f"{'inputs' if tensors is inputs else 'outputs'} are {known}"
                )


# States ------------------------------------------------------------------------------


def find_states(
    inputs: list[GraphTensor], outputs: list[GraphTensor], hints: Sidecar
) -> list[StateSpec]:
    if hints.states is not None:
        by_input = {t.name: t for t in inputs}
        by_output = {t.name: t for t in outputs}
        return [
            _state(by_input[hint.input], by_output[hint.output], hint.batch_axis)
            for hint in hints.states
        ]
    # Candidates: FP32 with exactly one dynamic dimension, grouped by shape; a group of as
    # many inputs as outputs pairs in graph order.
    groups: dict[tuple[int, ...], tuple[list[GraphTensor], list[GraphTensor]]] = {}
    for tensors, side in ((inputs, 0), (outputs, 1)):
        for tensor in tensors:
            if tensor.datatype == "FP32" and len(tensor.dynamic) == 1:
                groups.setdefault(tensor.shape, ([], []))[side].append(tensor)
    states = []
    for shape, (ins, outs) in groups.items():
        if not ins or not outs:
            continue
        if len(ins) != len(outs):
            raise ValueError(
                f"inputs {[t.name for t in ins]} and outputs {[t.name for t in outs]} share "
                f"the shape {list(shape)}, in unequal numbers: name the state pairs in "
                "model.json's 'states'"
            )
        states += [_state(i, o, None) for i, o in zip(ins, outs, strict=True)]
    return states


def _state(given: GraphTensor, returned: GraphTensor, batch_axis: int | None) -> StateSpec:
    where = f"state '{given.name}' -> '{returned.name}'"
    if given.datatype != "FP32" or returned.datatype != "FP32":
        raise ValueError(f"{where}: states are FP32; the graph has {given.datatype}")
    if given.shape != returned.shape:
        raise ValueError(
            f"{where}: shapes {list(given.shape)} and {list(returned.shape)} differ; a state "
            "comes back in the shape it goes in"
        )
    if batch_axis is None:
        if len(given.dynamic) != 1:
            raise ValueError(
                f"{where}: dynamic dimensions {given.dynamic}; give its batch_axis in model.json"
            )
        batch_axis = given.dynamic[0]
    if given.dynamic != [batch_axis]:
        raise ValueError(
            f"{where}: shape {list(given.shape)} must be dynamic at its batch axis {batch_axis} "
            "only, its other dimensions fixed"
        )
    return StateSpec(
        input=given.name, output=returned.name, shape=given.shape, batch_axis=batch_axis
    )


# Axes --------------------------------------------------------------------------------

Axes = tuple[int, int | None]  # batch axis, sequence axis


def _check_hint(hint: AxesHint | None, field: str, where: str, dynamic: list[int]) -> None:
    """ValueError naming the sidecar's field unless its axes are dynamic ones, and two."""
    if hint is None:
        return
    for label, axis in (("batch_axis", hint.batch_axis), ("sequence_axis", hint.sequence_axis)):
        if axis is not None and axis not in dynamic:
            raise ValueError(f"model.json: {field}.{label}: {where} is not dynamic at axis {axis}")
    if hint.batch_axis is not None and hint.batch_axis == hint.sequence_axis:
        raise ValueError(
            f"model.json: {field}: batch_axis and sequence_axis are both {hint.batch_axis}"
        )


def _candidates(tensor: GraphTensor, hint: AxesHint | None) -> list[Axes]:
    """The (batch, sequence) axes a data input may have."""
    dynamic = tensor.dynamic
    where = f"input '{tensor.name}' (shape {list(tensor.shape)})"
    _check_hint(hint, f"inputs.{tensor.name}", where, dynamic)
    if hint is not None and hint.batch_axis is not None:
        if hint.sequence_axis_given:
            return [(hint.batch_axis, hint.sequence_axis)]
        rest = [axis for axis in dynamic if axis != hint.batch_axis]
        if len(rest) > 1:
            raise ValueError(f"model.json: give the sequence_axis of {where}")
        return [(hint.batch_axis, rest[0] if rest else None)]
    if hint is not None and hint.sequence_axis is not None:
        rest = [axis for axis in dynamic if axis != hint.sequence_axis]
        if len(rest) != 1:
            raise ValueError(f"model.json: give the batch_axis of {where}")
        return [(rest[0], hint.sequence_axis)]
    if len(dynamic) == 1:
        return [(dynamic[0], None)]
    if len(dynamic) == 2:
        return [(dynamic[0], dynamic[1]), (dynamic[1], dynamic[0])]
    if not dynamic:
        raise ValueError(
            f"{where} has no dynamic dimension, so no batch axis: export it with its batch "
            "and sequence axes in torch.onnx.export's dynamic_shapes= (dynamic_axes= with "
            "dynamo=False)"
        )
    raise ValueError(
        f"{where} has dynamic dimensions {dynamic}: give its batch_axis and sequence_axis in "
        "model.json"
    )


Run = tuple[list[TensorSpec], dict[str, np.ndarray]]  # the inputs' axes, the outputs


def _working(
    session: ort.InferenceSession,
    layouts: list[list[TensorSpec]],
    states: list[StateSpec],
    rows: int,
    steps: int,
) -> tuple[list[Run], str]:
    """The layouts of the inputs' axes that the graph runs with at `rows` rows of `steps`
    steps, its states coming back with as many rows, each with its outputs; and the last
    refusal (ORT's)."""
    working, failure = [], ""
    for inputs in layouts:
        try:
            values = run(
                session, random_feeds(inputs, states, rows, steps, random.Random(0)), QUIET
            )
        except ValueError as error:  # ORT refuses this layout: try the next one
            failure = str(error)
            continue
        if all(values[s.output].shape[s.batch_axis] == rows for s in states):
            working.append((inputs, values))
    return working, failure


def _rows_independent(
    session: ort.InferenceSession,
    inputs: list[TensorSpec],
    values: dict[str, np.ndarray],
    rows: int,
    steps: int,
) -> bool:
    """Whether the first row of the data inputs, changed, changes no more of each output than
    one row of it: true of a batch axis, not of a sequence axis (whose first step every later
    step reads)."""
    feeds = random_feeds(inputs, [], rows, steps, random.Random(0))
    for tensor in inputs:
        np.moveaxis(feeds[tensor.name], tensor.batch_axis, 0)[0] += 1  # a view: feeds change
    try:
        changed = run(session, feeds, QUIET)
    except ValueError:  # an id out of an embedding's range, say: no answer
        return False
    return all(
        np.count_nonzero(changed[name] != value) * rows <= value.size
        for name, value in values.items()
    )


def probe_sizes(shapes: Iterable[tuple[int, ...]]) -> tuple[int, int]:
    """Two sizes to probe a graph's batch and sequence with, unlike any of its fixed
    dimensions (so that where they show in an output, they came from the probe)."""
    fixed = {size for shape in shapes for size in shape}
    rows, steps = [size for size in SIZES if size not in fixed][:2]
    return rows, steps


def find_axes(
    session: ort.InferenceSession,
    data_in: list[GraphTensor],
    data_out: list[GraphTensor],
    states: list[StateSpec],
    hints: Sidecar,
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    rows, steps = probe_sizes([t.shape for t in [*data_in, *data_out]] + [s.shape for s in states])
    choices = [_candidates(tensor, hints.inputs.get(tensor.name)) for tensor in data_in]
    if sum(len(c) > 1 for c in choices) > 4:
        raise ValueError("too many inputs of undecided axes: give them in model.json")
    layouts = [
        [
            TensorSpec(
                name=t.name, datatype=t.datatype, shape=t.shape, batch_axis=b, sequence_axis=s
            )
            for t, (b, s) in zip(data_in, combination, strict=True)
        ]
        for combination in itertools.product(*choices)
    ]
    working, failure = _working(session, layouts, states, rows, steps)
    if not working:
        # A graph that runs only at a length its outputs declare (the example's, fixed), at
        # two batch sizes: one may fit a Reshape by accident.
        for length in sorted({size for t in data_out for size in t.shape if size > 1}):
            if all(_working(session, layouts, states, batch, length)[0] for batch in (rows, steps)):
                raise ValueError(
                    f"the graph runs at {length} steps but not at {steps} ({failure}): it "
                    f"computes a length fixed at export; {REEXPORT}"
                )
        raise ValueError(
            "the graph runs with no layout of batch and sequence axes tried for its inputs, "
            f"at {rows} rows of {steps} steps ({failure}): give the axes in model.json; "
            f"or, if it computes a length fixed at export, {REEXPORT}"
        )
    if len(working) > 1 and states:
        raise ValueError(
            "the graph runs with the batch on either dynamic axis of its inputs: give each "
            "input's batch_axis and sequence_axis in model.json"
        )
    if len(working) > 1:  # a stateless graph: its batch is where rows are independent
        working = [w for w in working if _rows_independent(session, *w, rows, steps)] or working
    inputs, values = working[0]  # else: its first dynamic axis is the batch
    short = random_feeds(inputs, states, steps, SHORT, random.Random(1))
    try:
        second = run(session, short, QUIET)
    except ValueError as error:
        raise ValueError(
            f"the graph runs at {rows} rows of {steps} steps but fails with "
            f"{_shapes(inputs, short)} ({error}): it computes a length fixed at export; "
            f"{REEXPORT}"
        ) from None
    outputs = [
        _output(t, values[t.name], second[t.name], rows, steps, hints.outputs.get(t.name))
        for t in data_out
    ]
    return inputs, outputs


def _output(
    tensor: GraphTensor,
    first: np.ndarray,
    second: np.ndarray,
    rows: int,
    steps: int,
    hint: AxesHint | None,
) -> TensorSpec:
    """A data output's axes, read off a run of `rows` rows of `steps` steps (`first`) and one
    of `steps` rows of SHORT steps (`second`): the axis whose size follows the rows is the
    batch, the one that follows the steps the sequence, whatever size the graph declares
    there (the example's, where torch traced it as a constant)."""
    where = (
        f"output '{tensor.name}' (of shape {list(first.shape)} for {rows} rows of {steps} steps)"
    )
    cannot_tell = f"cannot tell the batch and sequence axes of {where}: give them in model.json"
    if first.ndim != second.ndim:
        raise ValueError(cannot_tell)
    sizes = list(zip(first.shape, second.shape, strict=True))
    batch = [axis for axis, pair in enumerate(sizes) if pair == (rows, steps)]
    sequence = [axis for axis, pair in enumerate(sizes) if pair == (steps, SHORT)]
    declared = tensor.shape if len(tensor.shape) == first.ndim else (-1,) * first.ndim
    shape = tuple(-1 if axis in batch + sequence else size for axis, size in enumerate(declared))
    dynamic = [axis for axis, size in enumerate(shape) if size == -1]
    _check_hint(hint, f"outputs.{tensor.name}", where, dynamic)
    if hint is not None and hint.batch_axis is not None:
        batch = [hint.batch_axis]
    if hint is not None and hint.sequence_axis_given:
        sequence = [] if hint.sequence_axis is None else [hint.sequence_axis]
    if len(batch) != 1 or len(sequence) > 1 or len(dynamic) > len(batch) + len(sequence):
        raise ValueError(cannot_tell)
    if first.shape[batch[0]] != rows or (sequence and first.shape[sequence[0]] != steps):
        raise ValueError(f"model.json's axes for {where} do not fit that run")
    return TensorSpec(
        name=tensor.name,
        datatype=tensor.datatype,
        shape=shape,
        batch_axis=batch[0],
        sequence_axis=sequence[0] if sequence else None,
    )


# Runs --------------------------------------------------------------------------------


def run(
    session: ort.InferenceSession,
    feeds: dict[str, np.ndarray],
    options: ort.RunOptions | None = None,
) -> dict[str, np.ndarray]:
    """The graph's outputs by name; ValueError with the first line of ORT's refusal."""
    names = [output.name for output in session.get_outputs()]
    try:
        values = session.run(None, feeds, options)
    except Exception as error:  # ORT's errors share no base class narrower than Exception
        raise ValueError(f"ORT: {ort_reason(error)}") from None
    return dict(zip(names, values, strict=True))


# What ORT's messages say besides the cause: its status code and the C++ check that failed.
_ORT_NOISE = re.compile(
    r"^\[ONNXRuntimeError\] : \d+ : \w+ : |/onnxruntime_src/\S+ .*? was false\. "
)


def ort_reason(error: Exception) -> str:
    """The cause an ORT error states, on one line, without its status code or C++ check."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return _ORT_NOISE.sub("", first)


def _shapes(inputs: Sequence[TensorSpec], feeds: dict[str, np.ndarray]) -> str:
    """The data inputs fed, as `name [shape]`, for messages."""
    return ", ".join(f"{t.name} {list(feeds[t.name].shape)}" for t in inputs)


def random_feeds(
    inputs: Sequence[TensorSpec], states: Sequence[StateSpec], rows: int, steps: int,
    rng: random.Random,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Random data inputs (zeros for integers: valid ids for any embedding) and states."""
    generator = np.random.default_rng(rng.randrange(2**32))
    feeds: dict[str, np.ndarray] = {}
    for tensor in inputs:
        shape = [
            rows if axis == tensor.batch_axis else steps if axis == tensor.sequence_axis else size
            for axis, size in enumerate(tensor.shape)
        ]
        dtype = DTYPES[tensor.datatype]
        if dtype.kind == "f":
            feeds[tensor.name] = generator.standard_normal(shape).astype(dtype)
        else:
            feeds[tensor.name] = np.zeros(shape, dtype)
    for state in states:
        value = generator.standard_normal(state.graph_shape(rows)) * 0.5
        feeds[state.input] = value.astype(np.float32)
    return feeds


def check_chunks(
    session: ort.InferenceSession,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    states: list[StateSpec],
) -> float:
    """The deviation of a sequence fed in random chunks, its state carried, from the same
    sequence fed whole: outputs along their sequence axis (others: the last chunk's) and
    the final states."""

    def run_chunk(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return run(session, feeds)
        except ValueError as error:
            raise ValueError(
                "fed a sequence whole and in chunks with its state carried, the graph fails "
                f"with {_shapes(inputs, feeds)} ({error})"
            ) from None

    sequence = any(tensor.sequence_axis is not None for tensor in inputs)
    steps = CHUNK_STEPS if sequence else 1
    rng = random.Random(3)
    feeds = random_feeds(inputs, states, CHUNK_ROWS, steps, rng)
    whole = run_chunk(feeds)
    carried = {state.input: feeds[state.input] for state in states}
    pieces: list[dict[str, np.ndarray]] = []
    start = 0
    while start < steps:
        stop = min(steps, start + rng.randint(1, LONGEST_CHUNK))
        piece = {
            tensor.name: feeds[tensor.name]
            if tensor.sequence_axis is None
            else np.take(feeds[tensor.name], range(start, stop), axis=tensor.sequence_axis)
            for tensor in inputs
        }
        result = run_chunk({**piece, **carried})
        carried = {state.input: result[state.output] for state in states}
        pieces.append(result)
        start = stop
    errors = [
        deviation(
            pieces[-1][tensor.name]
            if tensor.sequence_axis is None
            else np.concatenate([p[tensor.name] for p in pieces], axis=tensor.sequence_axis),
            whole[tensor.name],
        )
        for tensor in outputs
    ]
    errors += [deviation(carried[state.input], whole[state.output]) for state in states]
    return max(errors, default=0.0)
