"""DataPlane: the protocol-neutral core every front end calls.

It speaks only `rnnserve.service.types` and raises `rnnserve.service.errors` for what a
client should hear. A request enters the lifecycle, is admitted (admission.py: model
version, sequence or session rows, path), held in the memory budget while it runs, and
answered by its path: stateless, one sequence, or a multi-session request, each timed by one
RequestTimer. Which versions are loaded is the model control's
(models.py); front ends `watch` for its changes, to keep their health checks true.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import metadata
from types import TracebackType

from rnnserve.service.busy_poll import BusyPoll
from rnnserve.service.dataplane import streaming
from rnnserve.service.dataplane.admission import Admission
from rnnserve.service.dataplane.admitted import Admitted
from rnnserve.service.dataplane.budget import Budget, Held
from rnnserve.service.dataplane.compute import Compute
from rnnserve.service.dataplane.configuration import PLATFORM, model_config
from rnnserve.service.dataplane.lifecycle import Lifecycle
from rnnserve.service.dataplane.models import ModelControl
from rnnserve.service.dataplane.timer import RequestTimer
from rnnserve.service.errors import InvalidArgument, NotFound, ServiceError
from rnnserve.service.in_flight import InFlight
from rnnserve.service.repository import LoadedVersion, Repository
from rnnserve.service.runtime import ModelRuntime
from rnnserve.service.sessions import SessionManager, StateStore
from rnnserve.service.sessions.control import CONTROL_INPUTS, CONTROL_OUTPUTS
from rnnserve.service.sessions.memory_store import MemoryStore
from rnnserve.service.sessions.reachability import Reachability
from rnnserve.service.settings import Settings
from rnnserve.service.types import (
    InferRequest,
    InferResponse,
    ModelConfig,
    ModelMetadata,
    ModelStatistics,
    Parameter,
    RepositoryEntry,
    ServerMetadata,
)

# Open Inference Protocol / Triton extensions this server implements.
EXTENSIONS = [
    "model_repository", "model_configuration", "statistics", "streaming", "parameters",
    "sequence",
]  # fmt: skip


class _Running:
    """`DataPlane._running`'s block (a class, not a generator: entered on every request)."""

    __slots__ = ("_busy", "_held", "_in_flight", "_session", "_timer")

    def __init__(
        self,
        held: Held,
        in_flight: InFlight,
        runtime: ModelRuntime,
        busy: BusyPoll | None,
        session: int | str,
    ) -> None:
        self._held = held
        self._in_flight = in_flight
        self._timer = RequestTimer(runtime)
        self._busy = busy
        self._session = session

    def __enter__(self) -> RequestTimer:
        self._in_flight.__enter__()
        if self._busy is not None:
            self._busy.begin()
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
            if self._busy is not None:
                self._busy.end(self._session)


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
        self._busy = BusyPoll(settings.busy_poll_us) if settings.busy_poll_us else None
        # Where the store keeps session states (device_state), None: in host memory.
        self.state_device = store.device if isinstance(store, MemoryStore) else None
        self._compute = Compute(settings, self.state_device)
        self._sessions = SessionManager(
            store, settings.max_sessions, settings.max_sessions_per_principal
        )
        self._budget = Budget(settings.max_request_elements, settings.max_inflight_bytes)
        self._admission = Admission(settings, self.repository, self._sessions, self._compute)
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
    def budget(self) -> Budget:
        """The memory budget, which also holds the messages the front ends receive."""
        return self._budget

    @property
    def draining(self) -> asyncio.Event:
        """Set once the data plane refuses new requests: front ends end their idle streams
        (UNAVAILABLE, to retry elsewhere) rather than wait for a request that would be
        refused."""
        return self._lifecycle.draining

    async def close(self, wait_s: float | None = None) -> None:
        """Drains, waits for the requests in flight (at most `wait_s`: what the shutdown
        has left of its grace period; the whole period by default), then stops the
        polling, the batchers, the sessions (and their store) and the threads."""
        self.drain()
        await self._models.stop()
        await self._lifecycle.idle(self.settings.grace_period_s if wait_s is None else wait_s)
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
        """A loaded model version ("" for the newest); NotFound or Unavailable otherwise."""
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

    def model_config(self, name: str, version: str = "") -> ModelConfig:
        """Triton's configuration of a loaded version ("" for the newest)."""
        model = self.repository.get(name, version)
        return model_config(model, self.settings, self.repository.policy(name))

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
            admitted, path = await self._admission.admit(request)
            # No await since the version was chosen: an unload waits for this request.
            with self._running(admitted) as timer:
                return await path.answer(admitted, timer)

    def answers_once(self, model: str) -> bool:
        """Whether a request of `model` is answered in one response, which `infer` gives
        (on a stream as well: cheaper than `stream_infer`'s generators): true unless some
        loaded version of the model decodes token by token (seq2seq), or the model is not
        loaded (`infer` refuses it as `stream_infer` would)."""
        return not self.repository.streams_tokens(model)

    def stream_infer(self, request: InferRequest) -> AsyncIterator[InferResponse]:
        """Responses as they come: one for sine and tagger, one per decoded token for
        seq2seq; the last carries `final`."""
        return streaming.stream_infer(self._lifecycle, self._admission, self._running, request)

    def _running(self, admitted: Admitted) -> _Running:
        """An admitted request while it runs, in the `with` block of what this returns:
        its memory held in the budget (refused here, before any work, when it may not
        be), counted in flight by its version, timed, and told to the event loop's busy polling
        (service/busy_poll.py), which polls awake after it where it ran alone."""
        model = admitted.model
        held = self._budget.hold(model.task.footprint(admitted.request), model.name)
        session = admitted.sequence.sequence_id
        return _Running(held, model.in_flight, model.runtime, self._busy, session)


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
