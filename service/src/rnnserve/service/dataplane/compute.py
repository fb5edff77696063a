"""Where a request's model work runs.

Model work (validation included, since checking a large tensor is work too) runs in a
thread pool, off the event loop, unless the request is small: a step of a few values
costs less than the hand-off to a thread and back (`inline_max_bytes`). With batching,
each ORT run of a session's step joins those of other sessions through its graph's
batcher, which the step waits for in a session thread.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from rnnserve.service.device import StateDevice
from rnnserve.service.repository import LoadedVersion
from rnnserve.service.sessions import Batcher
from rnnserve.service.settings import Settings
from rnnserve.service.tasks.base import Execute
from rnnserve.service.types import InferRequest, request_bytes

T = TypeVar("T")


class Compute:
    def __init__(self, settings: Settings, device: StateDevice | None = None) -> None:
        """`device`: where the session store keeps states (device_state), else None."""
        self.settings = settings
        self.device = device
        self._executor = ThreadPoolExecutor(
            settings.compute_threads, thread_name_prefix="rnnserve-compute"
        )
        # Session steps wait in these threads for their batched ORT runs, which run on the
        # compute threads: one pool waiting on the other could never deadlock, and enough
        # threads wait for a batch to fill.
        self._session_threads = ThreadPoolExecutor(
            max(settings.batch_max_size, settings.compute_threads),
            thread_name_prefix="rnnserve-session",
        )
        self._batchers: dict[tuple[str, str, str], Batcher] = {}  # (name, version, graph)

    @staticmethod
    async def call(threads: Executor | None, function: Callable[..., T], *args: object) -> T:
        """`function(*args)` in one of `threads`, or here on the event loop when None."""
        if threads is None:
            return function(*args)
        return await asyncio.get_running_loop().run_in_executor(threads, function, *args)

    async def load(self, function: Callable[[], T]) -> T:
        """Blocking start-up work (loading models) off the event loop."""
        return await self.call(self._executor, function)

    def start_batchers(self, models: list[LoadedVersion]) -> None:
        """With batching on, one batcher per graph of every model that can stream (called
        in the event loop)."""
        if not self.settings.batching:
            return
        for model in models:
            if not model.spec.streamable:
                continue
            for role in model.spec.graphs:
                self._batchers[(model.name, model.version, role)] = Batcher(
                    functools.partial(model.runtime.run, role),
                    model.spec.batch_axes(role),
                    model=model.name,
                    version=model.version,
                    max_size=self.settings.batch_max_size,
                    max_delay_us=self.settings.batch_max_queue_delay_us,
                    executor=self._executor,
                )

    async def stop_batchers(self, model: LoadedVersion) -> None:
        """Closes the batchers of a version being unloaded (none without batching)."""
        for role in model.spec.graphs:
            batcher = self._batchers.pop((model.name, model.version, role), None)
            if batcher is not None:
                await batcher.close()

    async def close(self) -> None:
        for batcher in self._batchers.values():
            await batcher.close()
        self._session_threads.shutdown(wait=True)
        self._executor.shutdown(wait=True)

    def threads_for(self, request: InferRequest) -> Executor | None:
        """The compute threads, or None (the event loop) for a request of at most
        `inline_max_bytes`, whose work costs less than the hand-off to a thread and back."""
        if request_bytes(request) <= self.settings.inline_max_bytes:
            return None
        return self._executor

    @staticmethod
    def execute(model: LoadedVersion, threads: Executor | None) -> Execute:
        """How a request run in `threads` (None: the event loop) runs its graphs: on the
        loop, with the metrics kept as its tallies."""
        return model.runtime.run if threads is not None else model.runtime.run_on_loop

    def for_sessions(
        self, model: LoadedVersion, threads: Executor | None
    ) -> tuple[Execute, Executor | None]:
        """How a session's step runs its graphs, and where it runs (`threads`, as
        `threads_for` chose, unless batching sends it to wait in a session thread). With
        device_state its state outputs stay on the device, for the store."""
        if not self.settings.batching:
            if self.device is not None:
                states = frozenset(model.spec.state_outputs)
                return model.runtime.resident(self.device, states, threads is None), threads
            return self.execute(model, threads), threads
        loop = asyncio.get_running_loop()
        batchers = {
            role: self._batchers[(model.name, model.version, role)] for role in model.spec.graphs
        }

        def execute(role: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return asyncio.run_coroutine_threadsafe(batchers[role].run(feeds), loop).result()

        return execute, self._session_threads
