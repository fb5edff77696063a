"""One request's timeline, recorded the same way whichever path answered it.

ModelStatistics (Triton's statistics extension) get a success with its parts (queue, input,
infer, output) or a failure; the queue-duration metric gets the wait before work began.
Marks may be set from a compute thread or the event loop; the timer ends on the loop.
"""

from __future__ import annotations

import time
from types import TracebackType

from rnnserve.service.runtime import ModelRuntime


class _Part:
    """A part of a request's time, summed over the blocks it times (a class, not a
    generator: entered on every request)."""

    __slots__ = ("_start", "ns")

    def __init__(self) -> None:
        self.ns = 0
        self._start = 0

    def __enter__(self) -> None:
        self._start = time.perf_counter_ns()

    def __exit__(self, *_: object) -> None:
        self.ns += time.perf_counter_ns() - self._start


class RequestTimer:
    def __init__(self, runtime: ModelRuntime) -> None:
        self._runtime = runtime
        self.arrived = time.perf_counter_ns()
        self._started = self._prepared = self.arrived
        self._began = False
        self._rows = 0
        self._infer = _Part()
        self._output = _Part()

    def started(self) -> None:
        """Work on the request began: what came before was queueing (observed when the
        request ends, on the event loop's thread, which alone keeps the tallies)."""
        self._started = time.perf_counter_ns()
        self._began = True

    def prepared(self, rows: int) -> None:
        """The request is validated into `rows` batch rows."""
        self._prepared = time.perf_counter_ns()
        self._rows = rows

    def computing(self) -> _Part:
        """Time spent running the model (session bookkeeping of its step included)."""
        return self._infer

    def responding(self) -> _Part:
        """Time spent turning results into response tensors."""
        return self._output

    def __enter__(self) -> RequestTimer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        total_ns = time.perf_counter_ns() - self.arrived
        if self._began:
            self._runtime.queue_seconds.observe((self._started - self.arrived) / 1e9)
        statistics = self._runtime.statistics
        if error is None:
            statistics.record_success(
                self._rows,
                total_ns,
                self._started - self.arrived,
                self._prepared - self._started,
                self._infer.ns,
                self._output.ns,
            )
        elif isinstance(error, Exception):  # not a cancelled or abandoned request
            statistics.record_failure(total_ns)
