"""DataPlane: the protocol-neutral core every front end calls.

It speaks only `rnnserve.service.types` and raises `rnnserve.service.errors` for what a
client should hear. A request is admitted (lifecycle, model version, sequence or session
rows), then answered by one of three paths: stateless, one sequence, or a multi-session
request, each timed by one RequestTimer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from importlib import metadata
from typing import Protocol

from rnnserve.service.dataplane.admitted import Admitted
from rnnserve.service.dataplane.compute import Compute
from rnnserve.service.dataplane.lifecycle import Lifecycle
from rnnserve.service.dataplane.rows import RowsPath
from rnnserve.service.dataplane.sequence import SequencePath
from rnnserve.service.dataplane.stateless import StatelessPath
from rnnserve.service.dataplane.timer import RequestTimer
from rnnserve.service.errors import FailedPrecondition
from rnnserve.service.model_spec import ModelSpec
from rnnserve.service.repository import LoadedVersion, Repository
from rnnserve.service.sessions import (
    SessionManager,
    StateStore,
    parse_sequence_parameters,
    split_control,
)
from rnnserve.service.sessions.control import CONTROL_INPUTS, CONTROL_OUTPUT_METADATA
from rnnserve.service.settings import Settings
from rnnserve.service.types import (
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelStatistics,
    Parameter,
    RepositoryEntry,
    ServerMetadata,
)

PLATFORM = "onnxruntime_onnx"  # Triton's name for an ONNX Runtime model
# Open Inference Protocol / Triton extensions this server implements.
EXTENSIONS = [
    "model_repository", "model_configuration", "statistics", "streaming", "parameters",
    "sequence",
]  # fmt: skip


class Path(Protocol):
    async def answer(self, admitted: Admitted, timer: RequestTimer) -> InferResponse: ...

    def stream(self, admitted: Admitted, timer: RequestTimer) -> AsyncIterator[InferResponse]: ...


def _package_version() -> str:
    try:
        return metadata.version("rnnserve")
    except metadata.PackageNotFoundError:  # running from a source checkout
        return "unknown"


class DataPlane:
    def __init__(self, settings: Settings, store: StateStore) -> None:
        self.settings = settings
        self.repository = Repository(settings)
        self._lifecycle = Lifecycle()
        self._compute = Compute(settings)
        self._sessions = SessionManager(
            store, settings.max_sessions, settings.max_sessions_per_principal
        )
        self._stateless = StatelessPath(self._compute)
        self._sequence = SequencePath(self._sessions, self._compute)
        self._rows = RowsPath(self._sessions, self._compute)

    # Lifecycle hooks, called by the server in this order.

    async def load(self) -> None:
        """Loads the repository and starts the sessions; ready() after."""
        await self._compute.load(self.repository.load)
        await self._sessions.start()
        self._compute.start_batchers(self.repository.loaded())
        self._lifecycle.loaded()

    def drain(self) -> None:
        """Refuses new requests from now on; those in flight go on."""
        self._lifecycle.drain()

    async def close(self) -> None:
        """Drains, waits for the requests in flight (at most the grace period), then stops
        the batchers, the sessions (and their store) and the threads."""
        self.drain()
        await self._lifecycle.idle(self.settings.grace_period_s)
        await self._compute.close()
        await self._sessions.close()
        self._lifecycle.closed()

    def live(self) -> bool:
        return self._lifecycle.live()

    def ready(self) -> bool:
        return self._lifecycle.ready()

    # Metadata.

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata("rnnserve", _package_version(), list(EXTENSIONS))

    def model(self, name: str, version: str = "") -> LoadedVersion:
        """A loaded model version ("" for the newest), for views of it such as Triton's
        ModelConfig; NotFound or Unavailable otherwise."""
        return self.repository.get(name, version)

    def model_ready(self, name: str, version: str = "") -> bool:
        return self.ready() and self.repository.has(name, version)

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
            "state_inputs": ",".join(spec.state_inputs),
            "state_outputs": ",".join(spec.state_outputs),
            **model.task.parameters(),
            **{f"training_{key}": value for key, value in spec.training.items()},
        }
        inputs, outputs = model.task.inputs, model.task.outputs
        if _takes_session_rows(model):
            inputs, outputs = [*inputs, *CONTROL_INPUTS], [*outputs, *CONTROL_OUTPUT_METADATA]
        return ModelMetadata(
            name=name,
            versions=self.repository.versions(name),
            platform=PLATFORM,
            inputs=inputs,
            outputs=outputs,
            parameters=parameters,
        )

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

    # Inference.

    async def infer(self, request: InferRequest) -> InferResponse:
        with self._lifecycle.request():
            admitted, path = self._admit(request)
            with RequestTimer(admitted.model.runtime) as timer:
                return await path.answer(admitted, timer)

    async def stream_infer(self, request: InferRequest) -> AsyncIterator[InferResponse]:
        """Responses as they come: one for sine and tagger, one per decoded token for
        seq2seq; the last carries `final`."""
        with self._lifecycle.request():
            admitted, path = self._admit(request)
            with RequestTimer(admitted.model.runtime) as timer:
                async for response in path.stream(admitted, timer):
                    yield response

    def _admit(self, request: InferRequest) -> tuple[Admitted, Path]:
        """The model version a request may run on, its sequence or session rows, the
        request as its task sees it (without control tensors) and the path that answers
        it; or why it may not run."""
        model = self.repository.get(request.model_name, request.model_version)
        sequence = parse_sequence_parameters(request.parameters)
        rows, request = split_control(request)
        if (sequence.in_session or rows is not None) and not model.spec.streamable:
            raise FailedPrecondition(f"model '{model.name}' {_why_not_streamable(model.spec)}")
        if rows is not None and not _takes_session_rows(model):
            raise FailedPrecondition(
                f"model '{model.name}' ({model.spec.task}) takes no multi-session requests "
                "(control inputs 'sequence_id', 'sequence_start', 'sequence_end'): it answers "
                "a session only after its last piece; send each session's pieces in requests "
                "of their own, with sequence parameters"
            )
        admitted = Admitted(model, request, sequence, rows, self._compute.threads_for(request))
        if rows is not None:
            return admitted, self._rows
        if sequence.in_session:
            return admitted, self._sequence
        return admitted, self._stateless


def _takes_session_rows(model: LoadedVersion) -> bool:
    return model.task.session_rows and model.spec.streamable


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
