"""DataPlane: the protocol-neutral core every adapter calls.

It speaks only `service.types` and raises only `service.errors` for what a client should
hear. Model work (validation included, since checking a large tensor is work too) runs in
a thread pool, off the event loop, unless the request is small: a step of a few values
costs less than the hand-off to a thread and back (`inline_max_bytes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from importlib import metadata
from typing import TypeVar

import numpy as np

from service import metrics
from service.errors import FailedPrecondition, InvalidArgument, ServiceError, Unavailable
from service.model_spec import ModelSpec
from service.repository import LoadedVersion, Repository
from service.sessions import (
    Batcher,
    RowStep,
    SequenceParameters,
    SessionKey,
    SessionManager,
    SessionRows,
    open_store,
    parse_sequence_parameters,
    split_control,
)
from service.sessions.control import CONTROL_INPUTS, ERROR_OUTPUT, FAILED_ROWS, error_tensor
from service.settings import Settings
from service.tasks.base import Execute, Result, State, Step
from service.types import (
    InferRequest,
    InferResponse,
    ModelConfigInfo,
    ModelMetadata,
    ModelStatistics,
    Parameter,
    RepositoryEntry,
    ServerMetadata,
    TensorMetadata,
    request_bytes,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

PLATFORM = "onnxruntime_onnx"  # Triton's name for an ONNX Runtime model
# Open Inference Protocol / Triton extensions this server implements.
EXTENSIONS = [
    "model_repository", "model_configuration", "statistics", "streaming", "parameters",
    "sequence",
]  # fmt: skip
# State tensors, inputs and outputs: their batch axis is 1 (see service/model_spec.py).
STATE_TENSORS = ("h0", "c0", "hn", "cn")
FINAL_RESPONSE = "triton_final_response"


def _package_version() -> str:
    try:
        return metadata.version("rnnserve")
    except metadata.PackageNotFoundError:  # running from a source checkout
        return "unknown"


class DataPlane:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.repository = Repository(settings)
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
        self._sessions = SessionManager(open_store(settings), settings.max_sessions)
        self._batchers: dict[tuple[str, str, str], Batcher] = {}  # (name, version, graph)
        self._phase = "loading"  # -> "ready" -> "draining" -> "closed"
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def load(self) -> None:
        await self._call(self._executor, self.repository.load)
        await self._sessions.start()
        if self.settings.batching:
            self._start_batchers()
        if self._phase == "loading":
            self._phase = "ready"

    def _start_batchers(self) -> None:
        """One batcher per graph of every model that can stream (in the event loop)."""
        settings = self.settings
        for model in self.repository.loaded():
            if not model.spec.streamable:
                continue
            for role in model.spec.graphs:
                self._batchers[(model.name, model.version, role)] = Batcher(
                    functools.partial(model.runtime.run, role),
                    STATE_TENSORS,
                    model=model.name,
                    version=model.version,
                    max_size=settings.batch_max_size,
                    max_delay_us=settings.batch_max_queue_delay_us,
                    executor=self._executor,
                )

    async def close(self) -> None:
        """Refuse new requests, let those in flight finish (for at most the grace period),
        then stop the compute threads."""
        self._phase = "draining"
        try:
            await asyncio.wait_for(self._idle.wait(), self.settings.grace_period_s)
        except TimeoutError:
            log.warning("closing with %d requests still in flight", self._in_flight)
        for batcher in self._batchers.values():
            await batcher.close()
        await self._sessions.close()
        self._session_threads.shutdown(wait=True)
        self._executor.shutdown(wait=True)
        self._phase = "closed"

    def live(self) -> bool:
        return self._phase != "closed"

    def ready(self) -> bool:
        return self._phase == "ready"

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata("rnnserve", _package_version(), list(EXTENSIONS))

    def model_ready(self, name: str, version: str = "") -> bool:
        if not self.ready():
            return False
        try:
            self.repository.get(name, version)
        except ServiceError:
            return False
        return True

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        model = self.repository.get(name, version)
        spec = model.spec
        parameters: dict[str, Parameter] = {
            "provider": model.runtime.provider,
            "task": spec.task,
            "cell": spec.cell,
            "num_layers": spec.num_layers,
            "hidden_size": spec.hidden_size,
            "num_directions": spec.num_directions,
            "streamable": spec.streamable,
            **model.task.parameters(),
            **{f"training_{key}": value for key, value in spec.training.items()},
        }
        inputs, outputs = model.task.inputs, model.task.outputs
        if self._takes_session_rows(model):
            inputs, outputs = [*inputs, *CONTROL_INPUTS], [*outputs, ERROR_OUTPUT]
        return ModelMetadata(
            name=name,
            versions=self.repository.versions(name),
            platform=PLATFORM,
            inputs=inputs,
            outputs=outputs,
            parameters=parameters,
        )

    def model_config(self, name: str, version: str = "") -> ModelConfigInfo:
        """Triton's view of the model. With max_batch_size > 0 Triton's dims leave out the
        batch dimension, and a [batch] tensor is written [1] (Triton's convention, which we
        accept on the wire as [batch, 1]). State tensors keep their full shape: their batch
        is axis 1, which Triton's config cannot express; they are optional inputs."""
        model = self.repository.get(name, version)
        settings = self.settings
        return ModelConfigInfo(
            name=name,
            platform=PLATFORM,
            max_batch_size=settings.max_batch_size,
            inputs=[self._config_dims(meta, model) for meta in model.task.inputs],
            outputs=[self._config_dims(meta, model) for meta in model.task.outputs],
            sequence_batching=model.spec.streamable,
            max_sequence_idle_microseconds=int(settings.session_idle_timeout_s * 1e6),
            dynamic_batching_max_queue_delay_microseconds=(
                settings.batch_max_queue_delay_us if settings.batching else 0
            ),
            instance_kind="KIND_GPU" if model.runtime.provider.startswith("CUDA") else "KIND_CPU",
            parameters={
                "provider": model.runtime.provider,
                "task": model.spec.task,
                "cell": model.spec.cell,
                "state_batch_axis": "1",
            },
        )

    @staticmethod
    def _config_dims(meta: TensorMetadata, model: LoadedVersion) -> TensorMetadata:
        stems = model.spec.state_names
        if meta.name in {f"{stem}{suffix}" for stem in stems for suffix in ("0", "n")}:
            return meta
        dims = meta.shape[1:] or (1,)
        return TensorMetadata(meta.name, meta.datatype, dims, meta.optional)

    def model_statistics(self, name: str = "", version: str = "") -> list[ModelStatistics]:
        """Every loaded version's statistics, or one model's (all its versions, or one)."""
        if not name:
            models = self.repository.loaded()
        elif not version:
            models = [self.repository.get(name, v) for v in self.repository.versions(name)]
        else:
            models = [self.repository.get(name, version)]
        return [model.runtime.statistics.snapshot() for model in models]

    def repository_index(self) -> list[RepositoryEntry]:
        return self.repository.entries()

    def model_names(self) -> list[str]:
        return self.repository.names()

    async def infer(self, request: InferRequest) -> InferResponse:
        model, sequence, rows, request = self._admit(request)
        arrived = time.perf_counter_ns()
        threads = self._threads_for(request)
        with self._tracked():
            try:
                if rows is not None:
                    return await self._answer_rows(model, request, rows, arrived, threads)
                if sequence.in_session:
                    return await self._answer_in_session(model, request, sequence, arrived, threads)
                return await self._call(threads, self._answer, model, request, arrived)
            except Exception as error:
                model.runtime.statistics.record_failure(time.perf_counter_ns() - arrived)
                raise self._client_error(error, model) from None

    async def stream_infer(self, request: InferRequest) -> AsyncIterator[InferResponse]:
        model, sequence, rows, request = self._admit(request)
        arrived = time.perf_counter_ns()
        threads = self._threads_for(request)
        with self._tracked():
            try:
                if rows is not None:
                    response = await self._answer_rows(model, request, rows, arrived, threads)
                    response.parameters[FINAL_RESPONSE] = True
                    yield response
                    return
                step, started, prepared = await self._call(
                    threads, self._prepare, model, request, arrived
                )
                execute = model.runtime.run
                if sequence.in_session:
                    execute, threads = self._session_compute(model, threads)
                    piece = await self._run_piece(
                        model, request, sequence, step, threads, execute, answer_last=False
                    )
                    if piece is not None:  # not the last piece: answered already
                        yield self._response(model, request, step, piece, {FINAL_RESPONSE: True})
                        self._record_piece(model, step, arrived, started, prepared)
                        return
                    # The last piece: `step` now starts from the session's state, and is
                    # answered (decoded, for seq2seq) as any request is, response by response.
                results = model.task.stream(step, execute)
                infer_ns = output_ns = 0
                while True:
                    answer = await self._call(
                        threads, self._next_response, model, request, step, results
                    )
                    if answer is None:
                        break
                    response, step_infer_ns, step_output_ns = answer
                    infer_ns += step_infer_ns
                    output_ns += step_output_ns
                    yield response
            except Exception as error:
                model.runtime.statistics.record_failure(time.perf_counter_ns() - arrived)
                raise self._client_error(error, model) from None
            done = time.perf_counter_ns()
            model.runtime.statistics.record_success(
                step.rows,
                done - arrived,
                started - arrived,
                prepared - started,
                infer_ns,
                output_ns,
            )

    # Sessions: requests with a sequence_id.

    async def _answer_in_session(
        self, model: LoadedVersion, request: InferRequest, sequence: SequenceParameters,
        arrived: int, threads: Executor | None,
    ) -> InferResponse:  # fmt: skip
        step, started, prepared = await self._call(threads, self._prepare, model, request, arrived)
        execute, threads = self._session_compute(model, threads)
        result = await self._run_piece(
            model, request, sequence, step, threads, execute, answer_last=True
        )
        assert result is not None  # a unary piece is always answered in the session
        response = self._response(model, request, step, result, {})
        self._record_piece(model, step, arrived, started, prepared)
        return response

    async def _run_piece(
        self, model: LoadedVersion, request: InferRequest, sequence: SequenceParameters,
        step: Step, threads: Executor | None, execute: Execute, *, answer_last: bool,
    ) -> Result | None:  # fmt: skip
        """Runs one piece of a session from the state it carries, in the session's turn,
        with `execute` in `threads` (see `_session_compute`).

        Returns the piece's answer; for the last piece with `answer_last` false, returns
        None with `step.state` set to the session's state (already freed), for the caller
        to answer response by response outside the session's turn.
        """
        self._check_session_request(model, request, sequence, step)
        key = SessionKey(model.name, model.version, sequence.sequence_id)

        async def run(state: State) -> tuple[Result | None, State]:
            step.state = state
            if not sequence.end:
                return await self._call(threads, model.task.session_piece, step, execute)
            if not answer_last:
                return None, state
            result = await self._call(threads, model.task.run, step, execute)
            return result, result.state

        return await self._sessions.step(key, sequence.start, sequence.end, step.state, run)

    @staticmethod
    def _check_session_request(
        model: LoadedVersion, request: InferRequest, sequence: SequenceParameters, step: Step
    ) -> None:
        if step.rows != 1:
            raise InvalidArgument(
                f"a sequence request (sequence_id {sequence.sequence_id!r}) has batch size "
                f"{step.rows}; expected 1: a session carries the state of one sequence"
            )
        state_input = None if sequence.start else _state_input(model, request)
        if state_input is not None:
            raise InvalidArgument(
                f"input '{state_input}' is accepted only with sequence_start=true: a "
                f"continuation of sequence {sequence.sequence_id!r} starts from the state "
                "the server keeps; to resume from a state of your own, start again with it"
            )

    # Multi-session requests: control tensors make each row one step of its own session.

    async def _answer_rows(
        self, model: LoadedVersion, request: InferRequest, rows: SessionRows, arrived: int,
        threads: Executor | None,
    ) -> InferResponse:  # fmt: skip
        """Steps every row's session in one run of the batch. Rows whose session cannot step
        fail alone: their outputs are zeros (empty strings for text), their states stay as
        they were, and `sequence_error` tells each row's outcome."""
        step, started, prepared = await self._call(threads, self._prepare, model, request, arrived)
        execute, threads = self._session_compute(model, threads)
        self._check_rows_request(model, request, rows, step)
        row_steps = [
            RowStep(SessionKey(model.name, model.version, sequence_id), start, end)
            for sequence_id, start, end in zip(rows.ids, rows.starts, rows.ends, strict=True)
        ]

        async def run(state: State) -> tuple[Result, State]:
            step.state = state
            result = await self._call(threads, model.task.run, step, execute)
            return result, result.state

        result, errors = await self._sessions.step_rows(row_steps, step.state, run)
        failed = [row for row, error in enumerate(errors) if error is not None]
        _blank_rows(result, failed)
        response = self._response(model, request, step, result, {FAILED_ROWS: len(failed)})
        response.outputs.append(error_tensor([error.message if error else "" for error in errors]))
        self._record_piece(model, step, arrived, started, prepared)
        return response

    @staticmethod
    def _check_rows_request(
        model: LoadedVersion, request: InferRequest, rows: SessionRows, step: Step
    ) -> None:
        if rows.rows != step.rows:
            raise InvalidArgument(
                f"input 'sequence_id' has {rows.rows} rows; expected {step.rows}, one per "
                "row of the batch"
            )
        state_input = None if all(rows.starts) else _state_input(model, request)
        if state_input is not None:
            raise InvalidArgument(
                f"input '{state_input}' is accepted only when every row has "
                "sequence_start=true: the other rows continue from the state the server "
                "keeps; send the rows that resume from a state of your own in a request "
                "of their own"
            )

    @staticmethod
    def _takes_session_rows(model: LoadedVersion) -> bool:
        return model.task.session_rows and model.spec.streamable

    def _threads_for(self, request: InferRequest) -> Executor | None:
        """Where a request's model work runs: the compute threads, or None (the event loop)
        for a request of at most `inline_max_bytes`, whose work costs less than the
        hand-off to a thread and back."""
        if request_bytes(request) <= self.settings.inline_max_bytes:
            return None
        return self._executor

    def _session_compute(
        self, model: LoadedVersion, threads: Executor | None
    ) -> tuple[Execute, Executor | None]:
        """How a session's piece runs its graphs, and where it runs (`threads`, as
        `_threads_for` chose). With batching, each ORT run joins those of other sessions
        through the graph's batcher, which the piece waits for in a session thread."""
        if not self.settings.batching:
            return model.runtime.run, threads
        loop = asyncio.get_running_loop()
        batchers = {
            role: self._batchers[(model.name, model.version, role)] for role in model.spec.graphs
        }

        def execute(role: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return asyncio.run_coroutine_threadsafe(batchers[role].run(feeds), loop).result()

        return execute, self._session_threads

    @staticmethod
    def _record_piece(
        model: LoadedVersion, step: Step, arrived: int, started: int, prepared: int
    ) -> None:
        done = time.perf_counter_ns()
        model.runtime.statistics.record_success(
            step.rows, done - arrived, started - arrived, prepared - started, done - prepared, 0
        )

    # Steps of a request, each run in a compute thread.

    def _prepare(
        self, model: LoadedVersion, request: InferRequest, arrived: int
    ) -> tuple[Step, int, int]:
        started = time.perf_counter_ns()
        metrics.QUEUE_DURATION.labels(model.name, model.version).observe((started - arrived) / 1e9)
        step = model.task.prepare(request)
        return step, started, time.perf_counter_ns()

    def _answer(self, model: LoadedVersion, request: InferRequest, arrived: int) -> InferResponse:
        step, started, prepared = self._prepare(model, request, arrived)
        result = model.task.run(step, model.runtime.run)
        computed = time.perf_counter_ns()
        response = self._response(model, request, step, result, {})
        done = time.perf_counter_ns()
        model.runtime.statistics.record_success(
            step.rows,
            done - arrived,
            started - arrived,
            prepared - started,
            computed - prepared,
            done - computed,
        )
        return response

    def _next_response(
        self, model: LoadedVersion, request: InferRequest, step: Step, results: Iterator[Result]
    ) -> tuple[InferResponse, int, int] | None:
        """The next streamed response, with the ns spent computing and building it."""
        start = time.perf_counter_ns()
        result = next(results, None)
        if result is None:
            return None
        computed = time.perf_counter_ns()
        response = self._response(model, request, step, result, {FINAL_RESPONSE: result.final})
        return response, computed - start, time.perf_counter_ns() - computed

    @staticmethod
    def _response(
        model: LoadedVersion,
        request: InferRequest,
        step: Step,
        result: Result,
        parameters: dict[str, Parameter],
    ) -> InferResponse:
        return InferResponse(
            model_name=model.name,
            model_version=model.version,
            id=request.id,
            outputs=model.task.respond(step, result),
            parameters=parameters,
        )

    # Admission, sequences and bookkeeping.

    def _admit(
        self, request: InferRequest
    ) -> tuple[LoadedVersion, SequenceParameters, SessionRows | None, InferRequest]:
        """The model version a request may run on, its sequence or session rows and the
        request as its task sees it (without control tensors), or why it may not run."""
        if self._phase == "loading":
            raise Unavailable("the server is still loading its models; retry shortly")
        if self._phase != "ready":
            raise Unavailable("the server is shutting down and takes no new requests")
        model = self.repository.get(request.model_name, request.model_version)
        sequence = parse_sequence_parameters(request.parameters)
        rows, request = split_control(request)
        if (sequence.in_session or rows is not None) and not model.spec.streamable:
            raise FailedPrecondition(f"model '{model.name}' {_why_not_streamable(model.spec)}")
        if rows is not None and not self._takes_session_rows(model):
            raise FailedPrecondition(
                f"model '{model.name}' ({model.spec.task}) takes no multi-session requests "
                "(control inputs 'sequence_id', 'sequence_start', 'sequence_end'): it answers "
                "a session only after its last piece; send each session's pieces in requests "
                "of their own, with sequence parameters"
            )
        return model, sequence, rows, request

    @contextlib.contextmanager
    def _tracked(self) -> Iterator[None]:
        """Counts a request in flight; close() waits for the count to reach zero."""
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    @staticmethod
    async def _call(threads: Executor | None, function: Callable[..., T], *args: object) -> T:
        """`function(*args)` in one of `threads`, or here on the event loop when None."""
        if threads is None:
            return function(*args)
        return await asyncio.get_running_loop().run_in_executor(threads, function, *args)

    @staticmethod
    def _client_error(error: Exception, model: LoadedVersion) -> ServiceError:
        """What the client hears: our own errors verbatim, anything else logged here and
        reported without its details (no traceback ever reaches a client)."""
        if isinstance(error, ServiceError):
            return error
        log.error("model %s version %s failed", model.name, model.version, exc_info=error)
        return ServiceError(f"model '{model.name}' version {model.version} failed internally")


def _state_input(model: LoadedVersion, request: InferRequest) -> str | None:
    """The first state input (h0, c0) the request carries, if any: a continuation starts
    from the state the server keeps, never from one the client sends."""
    state_inputs = {f"{stem}0" for stem in model.spec.state_names}
    return next((t.name for t in request.inputs if t.name in state_inputs), None)


def _blank_rows(result: Result, rows: list[int]) -> None:
    """Zeros (empty strings for text) in the given rows of every output."""
    for name, array in result.outputs.items():
        index = (slice(None), rows) if name in STATE_TENSORS else rows
        array[index] = b"" if array.dtype == object else 0


def _why_not_streamable(spec: ModelSpec) -> str:
    """The refusal of a session, in the words its export metadata justifies."""
    if spec.num_directions == 2:
        return (
            "is bidirectional and cannot stream: its backward direction needs the whole "
            "sequence; send the whole sequence, no 'sequence_id'"
        )
    return (
        "is exported as not streamable (its chunked runs were not verified equal to whole "
        "ones); send the whole sequence, no 'sequence_id'"
    )
