"""Where a request's model work runs.

Model work (validation included, since checking a large tensor is work too) runs in a
thread pool, off the event loop, unless the request is small: a step of a few values
costs less than the hand-off to a thread and back (`inline_max_bytes`). With batching,
each ORT run of a session's step joins those of other sessions through its graph's
batcher, which the step waits for in a session thread. With dynamic batching, a stateless
request's ORT runs (seq2seq: its encoder's, then every decoding step's) join those of
other stateless requests of its version likewise, waiting in the version's own threads:
as many as its largest batch, so that a batch can fill.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from rnnserve.service import affinity
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
        # With the process pinned to a core (cpu_affinity), work off the loop runs on all
        # the setting's CPUs, and ONNX Runtime's pools, started here by the loads, too.
        self._release = affinity.releaser(settings.cpu_affinity)
        self._executor = ThreadPoolExecutor(
            settings.compute_threads, "rnnserve-compute", self._release
        )
        # Session steps wait in these threads for their batched ORT runs, which run on the
        # compute threads: one pool waiting on the other could never deadlock, and enough
        # threads wait for a batch to fill.
        self._session_threads = ThreadPoolExecutor(
            max(settings.batch_max_size, settings.compute_threads),
            "rnnserve-session",
            self._release,
        )
        # (name, version) -> the version's batchers: for its sessions' steps, and for its
        # stateless requests (with the threads they wait in).
        self._sequences: dict[tuple[str, str], Batched] = {}
        self._stateless: dict[tuple[str, str], Batched] = {}

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
        """The batchers of every model (called in the event loop): with batching on, for
        the steps of a model that can stream; with dynamic batching, for its stateless
        requests. One per graph in each case."""
        settings = self.settings
        for model in models:
            key = (model.name, model.version)
            if settings.batching and model.spec.streamable:
                self._sequences[key] = Batched(
                    self._batchers(
                        model,
                        max_size=settings.batch_max_size,
                        max_delay_us=settings.batch_max_queue_delay_us,
                    ),
                    self._session_threads,
                )
            dynamic = model.dynamic_batching
            if dynamic is not None:
                self._stateless[key] = Batched(
                    self._batchers(
                        model,
                        max_size=dynamic.max_batch_size,
                        max_delay_us=dynamic.max_queue_delay_us,
                        preferred_sizes=dynamic.preferred_batch_sizes,
                        concurrency=settings.compute_threads,
                    ),
                    ThreadPoolExecutor(dynamic.max_batch_size, "rnnserve-stateless", self._release),
                )

    def _batchers(self, model: LoadedVersion, **options: Any) -> dict[str, Batcher]:
        return {
            role: Batcher(
                functools.partial(model.runtime.run, role),
                model.spec.batch_axes(role),
                model=model.name,
                version=model.version,
                executor=self._executor,
                inline_max_bytes=self.settings.inline_max_bytes,
                **options,
            )
            for role in model.spec.graphs
        }

    async def stop_batchers(self, model: LoadedVersion) -> None:
        """Closes the batchers of a version being unloaded (none without batching)."""
        key = (model.name, model.version)
        sequences = self._sequences.pop(key, None)
        if sequences is not None:
            await sequences.close()
        stateless = self._stateless.pop(key, None)
        if stateless is not None:
            await stateless.close()
            stateless.threads.shutdown(wait=False)  # each has its answer (or its failure)

    async def close(self) -> None:
        for batched in (*self._sequences.values(), *self._stateless.values()):
            await batched.close()
        for batched in self._stateless.values():
            batched.threads.shutdown(wait=True)
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
        batched = self._sequences[(model.name, model.version)]
        return batched.execute, batched.threads

    def coalesces(self, threads: Executor | None) -> bool:
        """Whether a session's step that runs in `threads` may join the steps of other
        sessions (dataplane/coalescing.py): on the event loop, its graphs run as `execute`
        runs them there (neither batching nor device_state), and not turned off."""
        settings = self.settings
        return (
            threads is None and settings.coalesce_steps and not settings.batching
            and self.device is None
        )  # fmt: skip

    def for_stateless(
        self, model: LoadedVersion, threads: Executor | None
    ) -> tuple[Execute, Executor | None]:
        """How a stateless request runs its graphs, and where it runs (`threads`, as
        `threads_for` chose, unless dynamic batching sends it to wait in a thread of its
        version's)."""
        if model.dynamic_batching is None:
            return self.execute(model, threads), threads
        batched = self._stateless[(model.name, model.version)]
        return batched.execute, batched.threads


class Batched:
    """A version's batchers, one per graph, and the threads whose callers wait for them:
    `execute` runs a graph through its batcher, from one of those threads. Made in the
    event loop, which runs the batchers."""

    def __init__(self, batchers: dict[str, Batcher], threads: ThreadPoolExecutor) -> None:
        self.batchers = batchers
        self.threads = threads
        self._loop = asyncio.get_running_loop()

    def execute(self, role: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batcher = self.batchers[role]
        return asyncio.run_coroutine_threadsafe(batcher.run(feeds), self._loop).result()

    async def close(self) -> None:
        for batcher in self.batchers.values():
            await batcher.close()
