"""The memory budget: what one request may imply, and what the requests in flight may take
together, held before any work.

Batch and sequence length are capped apart (max_batch_size, max_sequence_length), so a
request inside both may still imply gigabytes: ONNX Runtime computes an RNN's gates for
every time step of every row at once. Each request's footprint (tasks/base.py: inputs,
outputs, the recurrent kernels' working memory) is read off its shapes at admission;
past `max_request_elements`, or when the requests in flight would take more than
`max_inflight_bytes` with it, it is refused RESOURCE_EXHAUSTED naming the limit and its
size. The bytes held are the gauge `rnnserve_request_bytes_in_flight`.
"""

from __future__ import annotations

from rnnserve.service import metrics
from rnnserve.service.errors import ResourceExhausted
from rnnserve.service.tasks.base import Footprint

SMALLER = "send fewer rows or shorter pieces of the sequence"


class Budget:
    def __init__(self, max_request_elements: int, max_inflight_bytes: int) -> None:
        self.max_request_elements = max_request_elements
        self.max_inflight_bytes = max_inflight_bytes
        self.held = 0  # bytes of the requests in flight
        metrics.REQUEST_BYTES_LIMIT.set(max_inflight_bytes)
        self._gauge = metrics.TALLIES.counter(metrics.REQUEST_BYTES_IN_FLIGHT)

    def hold(self, footprint: Footprint, model: str) -> Held:
        """Holds the request's bytes, from now until the end of the `with` block of what it
        returns; ResourceExhausted when it may not."""
        self._check(footprint, model)
        self.held += footprint.bytes
        self._gauge.value += footprint.bytes
        return Held(self, footprint.bytes)

    def release(self, size: int) -> None:
        self.held -= size
        self._gauge.value -= size

    def _check(self, footprint: Footprint, model: str) -> None:
        if footprint.elements > self.max_request_elements:
            raise ResourceExhausted(
                f"the request implies {_size(footprint, model)}; at most "
                f"{self.max_request_elements:,} elements are accepted (max_request_elements): "
                f"{SMALLER}"
            )
        if footprint.bytes > self.max_inflight_bytes:
            raise ResourceExhausted(
                f"the request implies {_size(footprint, model)}; the requests in flight may "
                f"take at most {self.max_inflight_bytes:,} bytes together "
                f"(max_inflight_bytes): {SMALLER}"
            )
        if self.held + footprint.bytes > self.max_inflight_bytes:
            raise ResourceExhausted(
                f"the request implies {_size(footprint, model)}, and the requests in flight "
                f"hold {self.held:,} bytes of at most {self.max_inflight_bytes:,} "
                "(max_inflight_bytes); retry later"
            )


class Held:
    """A request's bytes held in the budget until its `with` block ends (a class, not a
    generator: entered on every request)."""

    __slots__ = ("_budget", "_size")

    def __init__(self, budget: Budget, size: int) -> None:
        self._budget = budget
        self._size = size

    def __enter__(self) -> None:
        pass

    def __exit__(self, *_: object) -> None:
        self._budget.release(self._size)


def _size(footprint: Footprint, model: str) -> str:
    """A refused request's footprint in words (written only for a refusal)."""
    return (
        f"{footprint.elements:,} elements (inputs {footprint.inputs:,}, outputs "
        f"{footprint.outputs:,}, recurrent work {footprint.work:,}: {footprint.rows:,} "
        f"rows x {footprint.steps:,} time steps of model '{model}'), {footprint.bytes:,} bytes"
    )
