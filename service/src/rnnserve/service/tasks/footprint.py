"""What a request implies, read off its tensors' shapes before any work: its footprint,
which service/dataplane/budget.py holds against the limits, and the sizes the tasks read for
it. Compiled (service/pyproject.toml), as tasks/base.py, whose `Task` the interpreted tasks
subclass, cannot be: every request's footprint is read here."""

from __future__ import annotations

from dataclasses import dataclass

from rnnserve.service.types import InferRequest, Tensor

WORK_ITEM_BYTES = 4  # FP32: outputs and the kernels' working memory


@dataclass(init=False, slots=True)
class Footprint:
    """The memory a request implies, in elements, read off its tensors' shapes before any
    work (service/dataplane/budget.py holds it against the limits): its inputs, the outputs
    it asks for, and the recurrent kernels' working memory, which for a long sequence is
    most of it (ONNX Runtime computes the gates of every time step at once, and keeps every
    step's hidden state): `rows` x `steps` x what a step holds per row. Not frozen: made
    for every request, a frozen one costs compiled code five times a plain one."""

    inputs: int
    input_bytes: int
    outputs: int
    work: int
    rows: int
    steps: int

    # __init__ by hand: compiled, a dataclass's generated one runs as Python, at three times
    # the cost; made for every request.
    def __init__(
        self, inputs: int, input_bytes: int, outputs: int, work: int, rows: int, steps: int
    ) -> None:
        self.inputs = inputs
        self.input_bytes = input_bytes
        self.outputs = outputs
        self.work = work
        self.rows = rows
        self.steps = steps

    @property
    def elements(self) -> int:
        return self.inputs + self.outputs + self.work

    @property
    def bytes(self) -> int:
        return self.input_bytes + WORK_ITEM_BYTES * (self.outputs + self.work)


def input_elements(request: InferRequest) -> int:
    """The elements of the request's inputs; a text tensor's characters (each becomes a
    token)."""
    return sum(_elements(tensor) for tensor in request.inputs)


def _elements(tensor: Tensor) -> int:
    if tensor.data.dtype == object:
        return sum(len(item) for item in tensor.data.flat if isinstance(item, bytes))
    return int(tensor.data.size)


def dims(request: InferRequest, name: str, *axes: int) -> tuple[int, ...]:
    """The sizes of a tensor's `axes` (0 where the request lacks it or them)."""
    for tensor in request.inputs:
        if tensor.name == name:
            shape = tensor.shape
            return tuple(int(shape[axis]) if axis < len(shape) else 0 for axis in axes)
    return (0,) * len(axes)


def text_dims(request: InferRequest, name: str) -> tuple[int, int]:
    """A text input's rows and its longest row in bytes (characters are at most that)."""
    tensor = next((t for t in request.inputs if t.name == name), None)
    if tensor is None or tensor.data.dtype != object:
        return 0, 0
    lengths = [len(item) for item in tensor.data.flat if isinstance(item, bytes)]
    return len(lengths), max(lengths, default=0)
