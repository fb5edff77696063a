"""DataPlane: the protocol-neutral core every adapter calls.

It speaks only `service.types` and raises only `service.errors` for what a client should
hear. Model work (validation included, since checking a large tensor is work too) runs in
a thread pool, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from typing import TypeVar

from service import metrics
from service.errors import FailedPrecondition, ServiceError, Unavailable
from service.repository import LoadedVersion, Repository
from service.sessions.parameters import parse_sequence_parameters
from service.settings import Settings
from service.tasks.base import Result, Step
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
)

log = logging.getLogger(__name__)

T = TypeVar("T")

PLATFORM = "onnxruntime_onnx"  # Triton's name for an ONNX Runtime model
# Open Inference Protocol / Triton extensions this server implements. "sequence" joins
# them once sequence requests are routed to service/sessions (see `_infer_sequence`).
EXTENSIONS = ["model_repository", "model_configuration", "statistics", "streaming", "parameters"]
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
        self._phase = "loading"  # -> "ready" -> "draining" -> "closed"
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def load(self) -> None:
        await self._in_thread(self.repository.load)
        if self._phase == "loading":
            self._phase = "ready"

    async def close(self) -> None:
        """Refuse new requests, let those in flight finish (for at most the grace period),
        then stop the compute threads."""
        self._phase = "draining"
        try:
            await asyncio.wait_for(self._idle.wait(), self.settings.grace_period_s)
        except TimeoutError:
            log.warning("closing with %d requests still in flight", self._in_flight)
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
        return ModelMetadata(
            name=name,
            versions=self.repository.versions(name),
            platform=PLATFORM,
            inputs=model.task.inputs,
            outputs=model.task.outputs,
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
        model = self._admit(request)
        arrived = time.perf_counter_ns()
        with self._tracked():
            try:
                return await self._in_thread(self._answer, model, request, arrived)
            except Exception as error:
                model.runtime.statistics.record_failure(time.perf_counter_ns() - arrived)
                raise self._client_error(error, model) from None

    async def stream_infer(self, request: InferRequest) -> AsyncIterator[InferResponse]:
        model = self._admit(request)
        arrived = time.perf_counter_ns()
        with self._tracked():
            try:
                step, started, prepared = await self._in_thread(
                    self._prepare, model, request, arrived
                )
                results = model.task.stream(step, model.runtime.run)
                infer_ns = output_ns = 0
                while True:
                    answer = await self._in_thread(
                        self._next_response, model, request, step, results
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

    def _admit(self, request: InferRequest) -> LoadedVersion:
        """The model version a request may run on, or why it may not."""
        if self._phase == "loading":
            raise Unavailable("the server is still loading its models; retry shortly")
        if self._phase != "ready":
            raise Unavailable("the server is shutting down and takes no new requests")
        model = self.repository.get(request.model_name, request.model_version)
        sequence = parse_sequence_parameters(request.parameters)
        if sequence.in_session:
            self._infer_sequence(model)
        return model

    def _infer_sequence(self, model: LoadedVersion) -> None:
        """The seam for stateful sessions (service/sessions): a request with a non-zero
        `sequence_id` will run its step there, starting from the session's stored state
        (`Step.state`) and storing `Result.state`."""
        if not model.spec.streamable:
            raise FailedPrecondition(
                f"model '{model.name}' is not streamable: it answers whole sequences only "
                "(bidirectional, or decoding from a whole source); send no 'sequence_id'"
            )
        raise FailedPrecondition(
            f"sequence requests ('sequence_id') are not yet supported for model '{model.name}'"
        )

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

    async def _in_thread(self, function: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    @staticmethod
    def _client_error(error: Exception, model: LoadedVersion) -> ServiceError:
        """What the client hears: our own errors verbatim, anything else logged here and
        reported without its details (no traceback ever reaches a client)."""
        if isinstance(error, ServiceError):
            return error
        log.error("model %s version %s failed", model.name, model.version, exc_info=error)
        return ServiceError(f"model '{model.name}' version {model.version} failed internally")
