"""DataPlane: the protocol-neutral core every front end calls.

It speaks only `rnnserve.service.types` and raises `rnnserve.service.errors` for what a
client should hear. A request is admitted (lifecycle, model version, sequence or session
rows), then answered by one of three paths: stateless, one sequence, or a multi-session
request, each timed by one RequestTimer. Which versions are loaded is the model control's
(models.py); front ends `watch` for its changes, to keep their health checks true.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import metadata
from types import TracebackType
from typing import Protocol

from rnnserve.model.describe import TOLERANCE as CHUNK_TOLERANCE
from rnnserve.model.spec import ModelSpec
from rnnserve.service.dataplane.admitted import Admitted
from rnnserve.service.dataplane.budget import Budget, Held
from rnnserve.service.dataplane.compute import Compute
from rnnserve.service.dataplane.lifecycle import Lifecycle
from rnnserve.service.dataplane.models import ModelControl
from rnnserve.service.dataplane.rows import RowsPath
from rnnserve.service.dataplane.sequence import SequencePath
from rnnserve.service.dataplane.stateless import StatelessPath
from rnnserve.service.dataplane.timer import RequestTimer
from rnnserve.service.errors import FailedPrecondition, InvalidArgument, NotFound, ServiceError
from rnnserve.service.in_flight import InFlight
from rnnserve.service.logs import OncePerCause
from rnnserve.service.repository import LoadedVersion, NotLoaded, Repository
from rnnserve.service.runtime import ModelRuntime
from rnnserve.service.sessions import (
    SEQUENCE_PARAMETERS,
    SequenceParameters,
    SessionKey,
    SessionManager,
    StateStore,
    parse_sequence_parameters,
    split_control,
)
from rnnserve.service.sessions.control import CONTROL_INPUTS, CONTROL_OUTPUTS
from rnnserve.service.sessions.reachability import Reachability
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

log = logging.getLogger(__name__)

PLATFORM = "onnxruntime_onnx"  # Triton's name for an ONNX Runtime model
# Open Inference Protocol / Triton extensions this server implements.
EXTENSIONS = [
    "model_repository", "model_configuration", "statistics", "streaming", "parameters",
    "sequence",
]  # fmt: skip


class Path(Protocol):
    async def answer(self, admitted: Admitted, timer: RequestTimer) -> InferResponse: ...

    def stream(self, admitted: Admitted, timer: RequestTimer) -> AsyncIterator[InferResponse]: ...


class _Running:
    """`DataPlane._running`'s block (a class, not a generator: entered on every request)."""

    __slots__ = ("_held", "_in_flight", "_timer")

    def __init__(self, held: Held, in_flight: InFlight, runtime: ModelRuntime) -> None:
        self._held = held
        self._in_flight = in_flight
        self._timer = RequestTimer(runtime)

    def __enter__(self) -> RequestTimer:
        self._in_flight.__enter__()
        return self._timer

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self._timer.__exit__(kind, error, traceback)
        finally:
            self._in_flight.__exit__()
            self._held.__exit__()


def _package_version() -> str:
    try:
        return metadata.version("rnnserve")
    except metadata.PackageNotFoundError:  # running from a source checkout
        return "unknown"


Watcher = Callable[[], Awaitable[None]]


class DataPlane:
    def __init__(self, settings: Settings, store: StateStore) -> None:
        self.settings = settings
        self.repository = Repository(settings)
        self._lifecycle = Lifecycle()
        self._compute = Compute(settings)
        self._sessions = SessionManager(
            store, settings.max_sessions, settings.max_sessions_per_principal
        )
        self._budget = Budget(settings.max_request_elements, settings.max_inflight_bytes)
        self._stateless = StatelessPath(self._compute)
        self._sequence = SequencePath(self._sessions, self._compute)
        self._rows = RowsPath(self._sessions, self._compute)
        self._unknown_parameters = OncePerCause(log)
        self._models = ModelControl(settings, self.repository, self._compute, self._notify)
        self._watchers: list[Watcher] = []
        store.reachability.watch(self._notify)  # readiness follows the store

    # Lifecycle hooks, called by the server in this order.

    async def load(self) -> None:
        """Starts the sessions and loads the models (polling from then on in poll mode);
        ready() after, if any model loaded (and, with strict readiness, none failed)."""
        await self._sessions.start()
        await self._models.start()
        self._lifecycle.loaded()
        await self._notify()

    def drain(self) -> None:
        """Refuses new requests from now on; those in flight go on."""
        self._lifecycle.drain()

    @property
    def draining(self) -> asyncio.Event:
        """Set once the data plane refuses new requests: front ends end their idle streams
        (UNAVAILABLE, to retry elsewhere) rather than wait for a request that would be
        refused."""
        return self._lifecycle.draining

    async def close(self) -> None:
        """Drains, waits for the requests in flight (at most the grace period), then stops
        the polling, the batchers, the sessions (and their store) and the threads."""
        self.drain()
        await self._models.stop()
        await self._lifecycle.idle(self.settings.grace_period_s)
        await self._compute.close()
        await self._sessions.close()
        self._lifecycle.closed()

    def live(self) -> bool:
        return self._lifecycle.live()

    @property
    def store_reachability(self) -> Reachability:
        return self._sessions.store.reachability

    def ready(self) -> bool:
        """Serving, with a model loaded, the state store reachable and, under strict
        readiness, no version failed."""
        return (
            self._lifecycle.ready()
            and bool(self.repository.loaded())
            and self.store_reachability.up
            and not (self.settings.strict_readiness and self.repository.failures())
        )

    def watch(self, watcher: Watcher) -> None:
        """`watcher` is awaited after every change of what is loaded or ready (the state
        store's reachability too)."""
        self._watchers.append(watcher)

    async def _notify(self) -> None:
        for watcher in self._watchers:
            await watcher()

    # Model control (Triton's model_repository extension).

    async def load_model(self, name: str, parameters: list[str]) -> None:
        """Loads (or brings up to date) one model from its folder; explicit mode only."""
        _check_repository_call("load", name, parameters, allowed=())
        with self._lifecycle.request():
            await self._models.load(name)

    async def unload_model(self, name: str, parameters: list[str]) -> None:
        """Unloads every version of a model once its requests in flight finished."""
        # tritonclient always sends unload_dependents: no model here has dependents.
        _check_repository_call("unload", name, parameters, allowed=("unload_dependents",))
        with self._lifecycle.request():
            await self._models.unload(name)

    def check_repository_name(self, repository: str) -> None:
        """The one repository this server has answers to "" and to its folder's name."""
        if repository not in ("", self.repository.root.name):
            raise NotFound(
                f"unknown repository '{repository}'; this server has one: "
                f"'{self.repository.root.name}'"
            )

    # Metadata.

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata("rnnserve", _package_version(), list(EXTENSIONS))

    def model(self, name: str, version: str = "") -> LoadedVersion:
        """A loaded model version ("" for the newest), for views of it such as Triton's
        ModelConfig; NotFound or Unavailable otherwise."""
        return self.repository.get(name, version)

    def model_ready(self, name: str, version: str = "") -> bool:
        return self._lifecycle.ready() and self.repository.has(name, version)

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        model = self.repository.get(name, version)
        spec = model.spec
        facts = {
            "cell": spec.cell,
            "num_layers": spec.num_layers,
            "hidden_size": spec.hidden_size,
            "num_directions": spec.num_directions,
        }
        parameters: dict[str, Parameter] = {
            "provider": model.runtime.provider,
            "task": spec.task,
            **{key: value for key, value in facts.items() if value is not None},
            "streamable": spec.streamable,
            "state_inputs": ",".join(spec.state_inputs),
            "state_outputs": ",".join(spec.state_outputs),
            **model.task.parameters(),
            **{f"training_{key}": value for key, value in spec.training.items()},
        }
        if model.takes_session_rows:
            parameters["control_inputs"] = ",".join(meta.name for meta in CONTROL_INPUTS)
            parameters["control_outputs"] = ",".join(CONTROL_OUTPUTS)
        # As Triton lists them: states and control tensors are not among the plain inputs
        # (tools such as perf_analyzer send every input listed); parameters name them.
        return ModelMetadata(
            name=name,
            versions=self.repository.versions(name),
            platform=PLATFORM,
            inputs=model.task.data_inputs,
            outputs=model.task.data_outputs,
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

    def labels(self, name: str, version: str = "") -> tuple[str, str]:
        """The model and version a request's metrics carry: the version that answers it,
        or would (the newest for ""); "" for what the repository does not know, since
        clients choose the names they send."""
        try:
            return name, self.repository.get(name, version).version
        except ServiceError:
            return (name if name in self.repository.names() else ""), ""

    # Inference.

    async def infer(self, request: InferRequest) -> InferResponse:
        with self._lifecycle.request():
            admitted, path = await self._admit(request)
            # No await since the version was chosen: an unload waits for this request.
            with self._running(admitted) as timer:
                return await path.answer(admitted, timer)

    async def stream_infer(self, request: InferRequest) -> AsyncIterator[InferResponse]:
        """Responses as they come: one for sine and tagger, one per decoded token for
        seq2seq; the last carries `final`."""
        with self._lifecycle.request():
            admitted, path = await self._admit(request)
            with self._running(admitted) as timer:
                async for response in path.stream(admitted, timer):
                    yield response

    def _running(self, admitted: Admitted) -> _Running:
        """An admitted request while it runs, in the `with` block of what this returns:
        its memory held in the budget (refused here, before any work, when it may not
        be), counted in flight by its version, timed."""
        model = admitted.model
        held = self._budget.hold(model.task.footprint(admitted.request), model.name)
        return _Running(held, model.in_flight, model.runtime)

    async def _admit(self, request: InferRequest) -> tuple[Admitted, Path]:
        """The model version a request may run on, its sequence or session rows, the
        request as its task sees it (without control tensors) and the path that answers
        it; or why it may not run."""
        sequence = parse_sequence_parameters(request.parameters)
        rows, request = split_control(request)
        model = await self._version_for(request, sequence if rows is None else None)
        self._warn_unknown_parameters(model, request)
        if (sequence.in_session or rows is not None) and not model.spec.streamable:
            raise FailedPrecondition(f"model '{model.name}' {_why_not_streamable(model.spec)}")
        if rows is not None and not model.takes_session_rows:
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

    def _warn_unknown_parameters(self, model: LoadedVersion, request: InferRequest) -> None:
        """Parameters no part of the server reads are accepted, as Triton accepts them, but
        said once per model and name: a misspelt `sequence_strat` must not pass unseen."""
        if not request.parameters:
            return
        known = SEQUENCE_PARAMETERS | model.task.request_parameters
        for name in request.parameters.keys() - known:
            self._unknown_parameters.warn(
                (model.name, name),
                "model %s ignores request parameter %r (it reads %s); said once per parameter",
                model.name,
                name,
                ", ".join(sorted(known)),
            )

    async def _version_for(
        self, request: InferRequest, sequence: SequenceParameters | None
    ) -> LoadedVersion:
        """The version a request runs on. A continuation of a sequence that names no version
        continues on the version holding its state (versions come and go while sessions
        run); a continuation on a version unloaded since is refused: its state went with it."""
        name, version = request.model_name, request.model_version
        continuing = sequence is not None and sequence.in_session and not sequence.start
        if not continuing:
            return self.repository.get(name, version)
        assert sequence is not None
        if not version:
            version = await self._version_holding(request.principal, name, sequence.sequence_id)
        entry = self.repository.entry(name, version) if version else None
        if isinstance(entry, NotLoaded):
            raise FailedPrecondition(
                f"sequence {sequence.sequence_id!r} of model '{name}' continues on version "
                f"{version}, which is not loaded any more ({entry.reason}): its state went "
                "with it; begin the sequence again with sequence_start=true"
            )
        return self.repository.get(name, version)

    async def _version_holding(self, principal: str, name: str, sequence_id: int | str) -> str:
        """The version whose sessions hold `principal`'s `sequence_id`: the only one that
        may, or the one that does, "" (the newest) when none does. One store call, only for
        models with several versions loaded or unloaded."""
        candidates = self.repository.session_versions(name)
        if len(candidates) < 2:
            return candidates[0] if candidates else ""
        keys = [SessionKey(principal, name, version, sequence_id) for version in candidates]
        found = await self._sessions.store.contains(keys)
        return next((key.version for key, held in zip(keys, found, strict=True) if held), "")


def _check_repository_call(
    action: str, name: str, parameters: list[str], allowed: tuple[str, ...]
) -> None:
    if not name:
        raise InvalidArgument(f"model_name is empty; expected the model to {action}")
    refused = sorted(set(parameters) - set(allowed))
    if refused:
        raise InvalidArgument(
            f"parameters {refused} are not supported: a model is loaded from its folder in "
            "the repository, as it is there"
        )


def _why_not_streamable(spec: ModelSpec) -> str:
    """The refusal of a session, in the words its export metadata justifies."""
    if spec.num_directions == 2:
        return (
            "is bidirectional and cannot stream: its backward direction needs the whole "
            "sequence; send the whole sequence, no 'sequence_id'"
        )
    if not spec.states:
        return (
            "keeps no state between requests, so it has no sequences: send each request on "
            "its own, no 'sequence_id'"
        )
    chunk_error = spec.training.get("chunk_error")
    if isinstance(chunk_error, float) and chunk_error > CHUNK_TOLERANCE:
        return (
            "cannot stream: fed in chunks with its state carried, it answers differently "
            f"from the whole sequence (by {chunk_error:.2g}, measured when it was loaded), as "
            "a bidirectional or attention model does; send the whole sequence, no "
            "'sequence_id'"
        )
    return (
        "is exported as not streamable (its chunked runs were not verified equal to whole "
        "ones); send the whole sequence, no 'sequence_id'"
    )
