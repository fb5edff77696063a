"""The memory store's states on the device (device_state): a slab per state of a layout,
`(capacity, before, after)` in ORT's memory on the device, that steps read and write by
row with the small graphs of row_graphs.py, run by ORT on that device.

A step's rows are gathered into a batch state on the device (DeviceArray) and its new
state, which the run left on the device, is scattered back into the slab in place; only
the slots (a few integers) travel. A state crosses to the host only when it must: a one
row copy for a record or a hand-over (`state`), a start's initial rows (zeros or the
client's h0) merged with continuing ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TypeAlias

import numpy as np
import onnxruntime as ort

from rnnserve.service.device import DeviceArray, StateDevice, held_on_device, resident_value
from rnnserve.service.sessions import row_graphs
from rnnserve.service.sessions.state import Layout
from rnnserve.service.types import State

# An input of a row graph: host arrays are copied to the device by ORT, OrtValues on it
# are read where they are.
_Input: TypeAlias = "np.ndarray | ort.OrtValue"
_GRAPHS: dict[str, Callable[[int], bytes]] = {
    "gather": row_graphs.gather,
    "merge": row_graphs.merge,
    "scatter": row_graphs.scatter,
    "grow": row_graphs.grow,
}


class RowGraphs:
    """The row graphs of one device, an ORT session each per count of state tensors, made
    at first use (a server has a few layouts, of one or two states each)."""

    def __init__(self, device: StateDevice) -> None:
        self.device = device
        self._sessions: dict[tuple[str, int], ort.InferenceSession] = {}
        self._options = ort.SessionOptions()
        self._options.log_severity_level = 3
        self._options.intra_op_num_threads = 1

    def run(
        self,
        graph: str,
        count: int,
        inputs: Mapping[str, _Input],
        outputs: Mapping[str, ort.OrtValue | None],
    ) -> list[ort.OrtValue]:
        """Runs `graph` for `count` states; each output into the OrtValue given (in place)
        or, for None, into a new one on the device. Returns the outputs in order."""
        session = self._session(graph, count)
        binding = session.io_binding()
        for name, value in inputs.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, value)
            else:
                binding.bind_ortvalue_input(name, value)
        for name, target in outputs.items():
            if target is None:
                binding.bind_output(name, self.device.kind, self.device.device_id)
            else:
                binding.bind_ortvalue_output(name, target)
        session.run_with_iobinding(binding)
        return list(binding.get_outputs())

    def _session(self, graph: str, count: int) -> ort.InferenceSession:
        session = self._sessions.get((graph, count))
        if session is None:
            session = ort.InferenceSession(
                _GRAPHS[graph](count), self._options, providers=self.device.providers
            )
            self._sessions[graph, count] = session
        return session


class DeviceSlab:
    """The states of every session of one layout on the device: row `slot` of `data[i]` is
    one session's state `names[i]`, as _Slab's host arrays would hold it."""

    def __init__(self, layout: Layout, graphs: RowGraphs) -> None:
        self.names = list(layout)
        self._graphs = graphs
        self._device = graphs.device
        self.data = [
            self._device.upload(np.zeros((0, shape[0], *shape[2:]), np.float32))
            for shape in layout.values()
        ]

    @property
    def capacity(self) -> int:
        return int(self.data[0].shape()[0])

    def grow(self, capacity: int) -> None:
        """Rows of zeros added up to `capacity`, on the device."""
        inputs = self._slabs()
        inputs["pads"] = np.array([0, 0, 0, capacity - self.capacity, 0, 0], np.int64)
        self.data = self._graphs.run("grow", len(self.names), inputs, self._new("grown"))

    def gather(self, slots: Sequence[int], into: State, rows: Sequence[int]) -> None:
        """Puts slot slots[j]'s state in row rows[j] of `into`: every state of `into`
        becomes a DeviceArray, its other rows as they were."""
        width = next(iter(into.values())).shape[1]
        if len(rows) == width and sorted(rows) == list(range(width)):
            # Every row from the slab: no other rows to keep.
            order = sorted(range(len(rows)), key=rows.__getitem__)
            values = self._gather([slots[j] for j in order])
        else:
            inputs = self._slabs()
            inputs["slots"] = np.array(slots, np.int64)
            inputs["at"] = np.array(rows, np.int64).reshape(-1, 1)
            for i, name in enumerate(self.names):
                inputs[f"base_{i}"] = _device_input(into[name])
            values = self._graphs.run("merge", len(self.names), inputs, self._new("rows"))
        for name, value in zip(self.names, values, strict=True):
            into[name] = held_on_device(DeviceArray(value, self._device))

    def scatter(self, slots: Sequence[int], state: State, rows: Sequence[int]) -> None:
        """Sets slot slots[j] to row rows[j] of `state`, in place."""
        inputs = self._slabs()
        inputs["take"] = np.array(rows, np.int64)
        inputs["slots"] = np.array(slots, np.int64).reshape(-1, 1)
        for i, name in enumerate(self.names):
            inputs[f"rows_{i}"] = _device_input(state[name])
        outputs = {f"slab_out_{i}": data for i, data in enumerate(self.data)}
        self._graphs.run("scatter", len(self.names), inputs, outputs)

    def state(self, slot: int) -> State:
        """A host copy of the slot's state as a one-row batch state."""
        values = self._gather([slot])
        return {
            name: DeviceArray(value, self._device).numpy()
            for name, value in zip(self.names, values, strict=True)
        }

    def _gather(self, slots: Sequence[int]) -> list[ort.OrtValue]:
        inputs = self._slabs()
        inputs["slots"] = np.array(slots, np.int64)
        return self._graphs.run("gather", len(self.names), inputs, self._new("rows"))

    def _slabs(self) -> dict[str, _Input]:
        """The slabs as the inputs of a row graph."""
        return {f"slab_{i}": data for i, data in enumerate(self.data)}

    def _new(self, output: str) -> dict[str, ort.OrtValue | None]:
        """A row graph's outputs `output`_i, each into a new OrtValue on the device."""
        return {f"{output}_{i}": None for i in range(len(self.names))}


def _device_input(array: np.ndarray) -> _Input:
    """A state array as a row graph's input: a resident one as the OrtValue it holds."""
    on_device = resident_value(array)
    return np.ascontiguousarray(array, np.float32) if on_device is None else on_device
