"""One request's timeline, recorded the same way whichever path answered it.

ModelStatistics (Triton's statistics extension) get a success with its parts (queue, input,
infer, output) or a failure; the queue-duration metric gets the wait before work began.
Marks may be set from a compute thread or the event loop.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from types import TracebackType

from rnnserve.service.runtime import ModelRuntime


class RequestTimer:
    def __init__(self, runtime: ModelRuntime) -> None:
        self._runtime = runtime
        self.arrived = time.perf_counter_ns()
        self._started = self._prepared = self.arrived
        self._rows = 0
        self._ns = {"infer": 0, "output": 0}

    def started(self) -> None:
        """Work on the request began: what came before was queueing."""
        self._started = time.perf_counter_ns()
        self._runtime.queue_seconds.observe((self._started - self.arrived) / 1e9)

    def prepared(self, rows: int) -> None:
        """The request is validated into `rows` batch rows."""
        self._prepared = time.perf_counter_ns()
        self._rows = rows

    def computing(self) -> contextlib.AbstractContextManager[None]:
        """Time spent running the model (session bookkeeping of its step included)."""
        return self._adding_to("infer")

    def responding(self) -> contextlib.AbstractContextManager[None]:
        """Time spent turning results into response tensors."""
        return self._adding_to("output")

    @contextlib.contextmanager
    def _adding_to(self, part: str) -> Iterator[None]:
        start = time.perf_counter_ns()
        try:
            yield
        finally:
            self._ns[part] += time.perf_counter_ns() - start

    def __enter__(self) -> RequestTimer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        total_ns = time.perf_counter_ns() - self.arrived
        statistics = self._runtime.statistics
        if error is None:
            statistics.record_success(
                self._rows,
                total_ns,
                self._started - self.arrived,
                self._prepared - self._started,
                self._ns["infer"],
                self._ns["output"],
            )
        elif isinstance(error, Exception):  # not a cancelled or abandoned request
            statistics.record_failure(total_ns)
