"""Batching: graph runs of different callers that arrive together become one ONNX Runtime
run. Its callers are the steps of different sessions (`--batching`) and, for a version
with dynamic batching, stateless requests (dataplane/compute.py gives each its batchers).

Each tensor is stacked on its batch axis (axis 0 unless the graph says otherwise: 1 for the
default models' states, (layers*directions, batch, hidden)); only steps whose tensors agree
in every other dimension (the same sequence length) go together. Rows of a recurrent
network never mix, so every caller gets what it would have got alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Executor

import numpy as np

from rnnserve.service import metrics
from rnnserve.service.errors import Unavailable

Tensors = dict[str, np.ndarray]
Runner = Callable[[Tensors], Tensors]


class _Step:
    __slots__ = ("feeds", "future", "queued_at", "rows")

    def __init__(self, feeds: Tensors, rows: int, future: asyncio.Future[Tensors]) -> None:
        self.feeds = feeds
        self.rows = rows
        self.future = future
        self.queued_at = time.perf_counter()


class Batcher:
    """Runs `runner` on the feeds given to `run`, gathering concurrent calls.

    `batch_axes` names the tensors, inputs and outputs, whose batch axis is not 0 (h0, c0,
    hn, cn of the default models: 1). With `enabled` false each call runs on its own.
    Gathering stops at `max_size` rows (a step that would pass it starts the next batch),
    `max_delay_us` after the first step waited, or at one of `preferred_sizes` (Triton's
    preferred batch sizes): at the largest, or at any other when no more steps are queued
    (they never wait out the delay). `concurrency` runs may be in flight at once, and
    while they are, arrivals gather. A batch of at most `inline_max_bytes` of inputs runs
    on the event loop, as a small request does (its run costs less than the hand-off to
    `executor` and back); a larger one in `executor`. Construct it inside the running
    event loop.
    """

    def __init__(
        self,
        runner: Runner,
        batch_axes: Mapping[str, int],
        *,
        model: str,
        version: str,
        enabled: bool = True,
        max_size: int = 64,
        max_delay_us: int = 500,
        preferred_sizes: Collection[int] = (),
        concurrency: int = 1,
        executor: Executor | None = None,
        inline_max_bytes: int = 0,
    ) -> None:
        self._runner = runner
        self._batch_axes = dict(batch_axes)
        self._queue_duration = metrics.QUEUE_DURATION.labels(model, version)
        self._enabled = enabled
        self._max_size = max_size
        self._max_delay_s = max_delay_us / 1e6
        self._preferred = frozenset(preferred_sizes)
        self._largest_preferred = max(self._preferred, default=0)
        self._executor = executor
        self._inline_max_bytes = inline_max_bytes
        self._queue: asyncio.Queue[_Step] = asyncio.Queue()
        self._left_over: _Step | None = None  # too many rows for the last batch: the next's
        self._waiting: set[_Step] = set()  # steps whose callers still wait, failed by close()
        self._gathering = asyncio.Lock()  # one worker gathers at a time, so batches fill
        self._running = 0  # runs in flight: while there are, arrivals wait to gather
        workers = concurrency if enabled else 0
        self._workers = [asyncio.create_task(self._work()) for _ in range(workers)]

    async def run(self, feeds: Tensors) -> Tensors:
        step = _Step(feeds, self._rows(feeds), asyncio.get_running_loop().create_future())
        if not self._enabled:
            return (await self._execute([step]))[0]
        self._waiting.add(step)
        self._queue.put_nowait(step)
        try:
            return await step.future
        finally:
            self._waiting.discard(step)

    async def close(self) -> None:
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        for step in self._waiting:
            if not step.future.done():
                step.future.set_exception(Unavailable("the server is shutting down"))

    async def _work(self) -> None:
        while True:
            async with self._gathering:
                steps = await self._gather()
            for group in self._by_shape(steps):
                await self._answer(group)

    async def _answer(self, group: list[_Step]) -> None:
        """Runs a group of steps and gives each its rows of the outputs, or the run's error."""
        self._running += 1
        try:
            results = await self._execute(group)
        except Exception as error:
            for step in group:
                if not step.future.done():
                    step.future.set_exception(error)
            return
        finally:
            self._running -= 1
        for step, result in zip(group, results, strict=True):
            if not step.future.done():  # the caller may have gone away
                step.future.set_result(result)

    async def _gather(self) -> list[_Step]:
        """The first waiting step and those arriving within the queue delay.

        A step that finds no other queued and no run in flight runs at once: waiting for
        company that is not coming would make a lone session pay the whole queue delay.
        """
        steps = [await self._first()]
        rows = steps[0].rows
        await asyncio.sleep(0)  # steps sent in the same turn of the event loop join
        if self._queue.empty() and self._running == 0:
            return steps
        deadline = time.perf_counter() + self._max_delay_s
        while rows < self._max_size and rows != self._largest_preferred:
            try:
                step = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                if rows in self._preferred:
                    break
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    step = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if rows + step.rows > self._max_size:
                self._left_over = step
                break
            steps.append(step)
            rows += step.rows
        return steps

    async def _first(self) -> _Step:
        """The step left over by the last batch, else the next to arrive."""
        step, self._left_over = self._left_over, None
        return step if step is not None else await self._queue.get()

    def _by_shape(self, steps: list[_Step]) -> list[list[_Step]]:
        """Steps that can share a run: equal in every dimension but the batch axis."""
        groups: dict[tuple[tuple[str, str, tuple[int, ...]], ...], list[_Step]] = {}
        for step in steps:
            key = tuple(
                (name, array.dtype.str, self._other_dims(name, array))
                for name, array in sorted(step.feeds.items())
            )
            groups.setdefault(key, []).append(step)
        return list(groups.values())

    async def _execute(self, group: list[_Step]) -> list[Tensors]:
        size = sum(array.nbytes for step in group for array in step.feeds.values())
        if size <= self._inline_max_bytes:
            return self._run_group(group)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run_group, group)

    def _run_group(self, group: list[_Step]) -> list[Tensors]:
        started = time.perf_counter()
        for step in group:
            self._queue_duration.observe(started - step.queued_at)
        if len(group) == 1:
            return [self._runner(group[0].feeds)]
        feeds = {
            name: np.concatenate([step.feeds[name] for step in group], axis=self._axis(name))
            for name in group[0].feeds
        }
        outputs = self._runner(feeds)
        return split_rows(outputs, [step.rows for step in group], self._batch_axes)

    def _axis(self, name: str) -> int:
        return self._batch_axes.get(name, 0)

    def _other_dims(self, name: str, array: np.ndarray) -> tuple[int, ...]:
        axis = self._axis(name)
        return array.shape[:axis] + array.shape[axis + 1 :]

    def _rows(self, feeds: Tensors) -> int:
        name, array = next(iter(feeds.items()))
        return int(array.shape[self._axis(name)])


def split_rows(
    outputs: Mapping[str, np.ndarray], rows: Sequence[int], axes: Mapping[str, int]
) -> list[Tensors]:
    """A batch's outputs given back to its parts, `rows[i]` rows to part i in order, each
    tensor cut on its batch axis (0 unless `axes` names another): views, not copies."""
    parts: list[Tensors] = [{} for _ in rows]
    for name, array in outputs.items():
        before = (slice(None),) * axes.get(name, 0)
        end = 0
        for part, count in zip(parts, rows, strict=True):
            start, end = end, end + count
            part[name] = array[(*before, slice(start, end))]
    return parts
