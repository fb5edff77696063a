"""The model repository: `<root>/<name>/<version>/` folders with integer versions, each
holding the ONNX graphs its ModelSpec names, or one graph without a spec, described at load
(model/describe.py) with the hints of a `model.json` sidecar (model/sidecar.py), whose
version policy (in the model's folder) says which versions to load.

`Repository` reads the folders and holds what became of each version: loaded, failed (with
the reason), or not loaded (unloaded, or left out by the version policy). Which versions
load and unload, and when, is the model control's (service/dataplane/models.py). A broken
version is reported UNAVAILABLE with its reason and never stops the others."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from rnnserve.model.folder import check_names, read_version
from rnnserve.model.sidecar import (
    ALL_VERSIONS,
    SIDECAR_NAME,
    DynamicBatchingHint,
    Sidecar,
    VersionPolicy,
    read_sidecar,
)
from rnnserve.model.spec import ModelSpec
from rnnserve.protocol.errors import UsageError
from rnnserve.service.errors import NotFound, ServiceError, Unavailable
from rnnserve.service.in_flight import InFlight
from rnnserve.service.runtime import ModelRuntime
from rnnserve.service.settings import Settings
from rnnserve.service.tasks import task_for
from rnnserve.service.tasks.base import Task
from rnnserve.service.types import DynamicBatching, RepositoryEntry

log = logging.getLogger(__name__)


# What the folders of one version held (name, size, modification time of each file, and of
# the model's sidecar): a version that failed is tried again once it changes.
Fingerprint = tuple[tuple[str, int, int], ...]


@dataclass
class LoadedVersion:
    name: str
    version: str
    spec: ModelSpec
    runtime: ModelRuntime
    task: Task
    # How its concurrent stateless requests are batched; None: each runs alone.
    dynamic_batching: DynamicBatching | None = None
    in_flight: InFlight = field(default_factory=InFlight)  # finished before it unloads

    @property
    def takes_session_rows(self) -> bool:
        """Whether each batch row may be one step of its own session (control tensors)."""
        return self.task.session_rows and self.spec.streamable


def load_version(
    name: str, version: str, folder: Path, settings: Settings, sidecar: Sidecar | None = None
) -> LoadedVersion:
    """Load one version folder; raises ValueError (or ORT's errors) when it is broken. A
    graph without a spec is described from what it says, the sidecar beside it (or else
    `sidecar`, the model's) supplying the rest."""
    spec, graph_files = read_version(folder, sidecar)
    batch_axes = {role: spec.batch_axes(role) for role in spec.graphs}
    runtime = ModelRuntime(name, version, graph_files, settings, batch_axes)
    for role in spec.graphs:
        check_names(spec, role, runtime.input_names(role), runtime.output_names(role))
    batching = dynamic_batching(settings, sidecar.dynamic_batching if sidecar else None)
    return LoadedVersion(name, version, spec, runtime, task_for(spec, settings), batching)


def dynamic_batching(
    settings: Settings, hint: DynamicBatchingHint | None
) -> DynamicBatching | None:
    """The version's dynamic batching: the model's sidecar turns it on, with the knobs it
    gives, or else the server's `dynamic_batching` flag; each knob left out is the flag's."""
    if hint is None:
        if not settings.dynamic_batching:
            return None
        hint = DynamicBatchingHint()
    preferred = hint.preferred_batch_size or settings.dynamic_batch_preferred_sizes
    delay = hint.max_queue_delay_microseconds
    batching = DynamicBatching(
        preferred_batch_sizes=tuple(sorted(set(preferred))),
        max_queue_delay_us=settings.dynamic_batch_max_queue_delay_us if delay is None else delay,
        max_batch_size=hint.max_batch_size or settings.dynamic_batch_max_size,
    )
    too_large = [size for size in preferred if size > batching.max_batch_size]
    if too_large:  # as Triton refuses such a model
        raise ValueError(
            f"dynamic batching: preferred batch sizes {too_large} exceed the max batch size "
            f"{batching.max_batch_size}"
        )
    return batching


@dataclass(frozen=True)
class Failed:
    """A version that failed to load, and why."""

    reason: str
    fingerprint: Fingerprint = ()


@dataclass(frozen=True)
class NotLoaded:
    """A version that is not loaded: unloaded, or left out by the version policy."""

    reason: str


Entry = LoadedVersion | Failed | NotLoaded


@dataclass
class ModelFolder:
    """One model's folder as it is on disk."""

    name: str
    versions: dict[str, Path]  # version ("1", "2", ...) -> its folder
    sidecar: Sidecar | None
    problem: str  # why the model's sidecar is unusable ("" when it is fine or absent)

    @property
    def policy(self) -> VersionPolicy:
        return (self.sidecar and self.sidecar.version_policy) or ALL_VERSIONS

    def wanted(self) -> list[str]:
        """The versions the policy loads, oldest first."""
        return [str(v) for v in self.policy.select([int(v) for v in self.versions])]

    def fingerprint(self, version: str) -> Fingerprint:
        folder = self.versions[version]
        try:
            files = [*sorted(folder.iterdir()), folder.parent / SIDECAR_NAME]
        except OSError:  # removed since the scan: the next one will say so
            files = []
        return tuple(
            (path.name, stat.st_size, stat.st_mtime_ns)
            for path in files
            if (stat := _stat(path)) is not None
        )

    def digest(self, version: str) -> str:
        """A hash of what the version serves: its files and the model's sidecar."""
        sha = hashlib.sha256()
        folder = self.versions[version]
        for path in [*sorted(folder.iterdir()), folder.parent / SIDECAR_NAME]:
            if path.is_file():
                sha.update(path.name.encode() + b"\0" + path.read_bytes())
        return sha.hexdigest()


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:
        return None


class Repository:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = Path(settings.model_repository)
        # name -> version -> what became of it
        self._models: dict[str, dict[str, Entry]] = {}
        # name -> its newest loaded version, as get() found it: asked on every request
        # that names no version; forgotten on every change.
        self._newest: dict[str, LoadedVersion] = {}
        self._session_versions: dict[str, tuple[str, ...]] = {}  # the same, for sessions
        self._policies: dict[str, VersionPolicy] = {}

    # The folders (blocking: call these off the event loop).

    def check_root(self) -> None:
        """UsageError unless the root is a folder this process can list."""
        if not self.root.is_dir():
            raise UsageError(f"--model-repository: {self.root} is not a folder")
        try:
            next(self.root.iterdir(), None)
        except OSError as error:
            raise UsageError(
                f"--model-repository: cannot read {self.root}: {error.strerror}"
            ) from None

    def folder_names(self) -> list[str]:
        """Model folders on disk (hidden ones, such as an export's staging, left out)."""
        return sorted(
            path.name
            for path in self.root.iterdir()
            if path.is_dir() and not path.name.startswith(".")
        )

    def scan(self, name: str) -> ModelFolder | None:
        """The model's folder, None when there is none."""
        folder = self.root / name
        if not folder.is_dir():
            return None
        versions = {
            str(int(path.name)): path
            for path in sorted(folder.iterdir(), key=lambda p: p.name)
            if path.is_dir() and path.name.isdigit() and int(path.name) > 0
        }
        try:
            sidecar, problem = read_sidecar(folder / SIDECAR_NAME), ""
        except ValueError as error:
            sidecar, problem = None, f"failed to load: {error}"
        return ModelFolder(name, versions, sidecar, problem)

    # What became of each version (on the event loop).

    def set(self, name: str, version: str, entry: Entry) -> None:
        self._models.setdefault(name, {})[version] = entry
        self._newest.pop(name, None)
        self._session_versions.pop(name, None)

    def set_policy(self, name: str, policy: VersionPolicy) -> None:
        self._policies[name] = policy

    def policy(self, name: str) -> VersionPolicy:
        return self._policies.get(name, ALL_VERSIONS)

    def entries_of(self, name: str) -> dict[str, Entry]:
        return dict(self._models.get(name, {}))

    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> list[str]:
        """Versions of a model that are loaded, oldest first."""
        return sorted(
            (
                version
                for version, entry in self._get_model(name).items()
                if isinstance(entry, LoadedVersion)
            ),
            key=int,
        )

    def entry(self, name: str, version: str) -> Entry:
        """What became of one version; NotFound for a version never seen."""
        versions = self._get_model(name)
        entry = versions.get(version)
        if entry is None:
            raise NotFound(
                f"model '{name}' has no version '{version}'; "
                f"available versions: {sorted(versions, key=int)}"
            )
        return entry

    def get(self, name: str, version: str = "") -> LoadedVersion:
        """A loaded version; "" selects the newest. NotFound or Unavailable otherwise."""
        if not version:
            newest = self._newest.get(name)
            if newest is not None:
                return newest
            loaded = self.versions(name)
            if not loaded:
                reasons = "; ".join(
                    f"version {v}: {entry.reason}"
                    for v, entry in sorted(self._get_model(name).items(), key=lambda i: int(i[0]))
                    if not isinstance(entry, LoadedVersion)  # none is, as none is loaded
                )
                raise Unavailable(f"model '{name}' has no version loaded ({reasons})")
            newest = self._newest[name] = self.get(name, loaded[-1])
            return newest  # a known name: get() raised NotFound for any other
        entry = self.entry(name, version)
        if not isinstance(entry, LoadedVersion):
            raise Unavailable(f"model '{name}' version {version} is unavailable: {entry.reason}")
        return entry

    def has(self, name: str, version: str = "") -> bool:
        """Whether `get` would return a loaded version."""
        try:
            self.get(name, version)
        except ServiceError:
            return False
        return True

    def loaded(self) -> list[LoadedVersion]:
        return [
            entry
            for name in self.names()
            for entry in self._models[name].values()
            if isinstance(entry, LoadedVersion)
        ]

    def failures(self) -> list[tuple[str, str, str]]:
        """(name, version, reason) of every version that failed to load."""
        return [
            (name, version, entry.reason)
            for name in self.names()
            for version, entry in sorted(self._models[name].items(), key=lambda item: int(item[0]))
            if isinstance(entry, Failed)
        ]

    def session_versions(self, name: str) -> tuple[str, ...]:
        """Versions that may hold sessions: loaded or unloaded (not failed), newest first
        (asked by every continuing step that names no version)."""
        versions = self._session_versions.get(name)
        if versions is None:
            entries = self._models.get(name, {})
            versions = tuple(
                sorted(
                    (v for v, entry in entries.items() if not isinstance(entry, Failed)),
                    key=int,
                    reverse=True,
                )
            )
            if name in self._models:  # unknown names are not remembered: clients choose them
                self._session_versions[name] = versions
        return versions

    def entries(self) -> list[RepositoryEntry]:
        return [
            RepositoryEntry(name, version, "READY")
            if isinstance(entry, LoadedVersion)
            else RepositoryEntry(name, version, "UNAVAILABLE", entry.reason)
            for name in self.names()
            for version, entry in sorted(self._models[name].items(), key=lambda item: int(item[0]))
        ]

    def streams_tokens(self, name: str) -> bool:
        """Whether a loaded version of the model may answer in several responses (its task
        decodes token by token); false for a name not loaded."""
        entries = self._models.get(name)
        if entries is None:
            return False
        return any(
            isinstance(entry, LoadedVersion) and entry.task.streams_tokens
            for entry in entries.values()
        )

    def _get_model(self, name: str) -> dict[str, Entry]:
        if name not in self._models:
            raise NotFound(f"unknown model '{name}'; available models: {self.names()}")
        return self._models[name]
