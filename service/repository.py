"""The model repository: `<root>/<name>/<version>/` folders with integer versions, each
holding the ONNX graphs its ModelSpec names, or one graph without a spec, described at load
(service/describe.py) with the hints of a `model.json` sidecar (service/sidecar.py). Every
version is loaded at start-up; a broken one is logged and reported UNAVAILABLE with its
reason, and never stops the others."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from rnnserve.errors import UsageError
from rnnserve.service import metrics
from rnnserve.service.describe import describe
from rnnserve.service.errors import NotFound, ServiceError, Unavailable
from rnnserve.service.model_spec import METADATA_KEY, ModelSpec
from rnnserve.service.runtime import ModelRuntime
from rnnserve.service.settings import Settings
from rnnserve.service.sidecar import SIDECAR_NAME, Sidecar, read_sidecar
from rnnserve.service.tasks import task_for
from rnnserve.service.tasks.base import Task
from rnnserve.service.types import RepositoryEntry

log = logging.getLogger(__name__)


@dataclass
class LoadedVersion:
    name: str
    version: str
    spec: ModelSpec
    runtime: ModelRuntime
    task: Task

    @property
    def takes_session_rows(self) -> bool:
        """Whether each batch row may be one step of its own session (control tensors)."""
        return self.task.session_rows and self.spec.streamable


def read_spec(graph: Path) -> ModelSpec | None:
    """The ModelSpec stored in a graph's ONNX metadata, None when it has none. ORT reads it
    (the server does not depend on the onnx package); the session is thrown away once the
    spec names the graphs."""
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in metadata:
        return None
    return ModelSpec.from_json(metadata[METADATA_KEY])


def load_version(
    name: str, version: str, folder: Path, settings: Settings, sidecar: Sidecar | None = None
) -> LoadedVersion:
    """Load one version folder; raises ValueError (or ORT's errors) when it is broken. A
    graph without a spec is described from what it says, the sidecar beside it (or else
    `sidecar`, the model's) supplying the rest."""
    onnx_files = sorted(folder.glob("*.onnx"))
    if not onnx_files:
        raise ValueError("no .onnx file in the version folder")
    spec = read_spec(onnx_files[0])
    if spec is None:
        if len(onnx_files) > 1:
            raise ValueError(
                f"{onnx_files[0].name} has no '{METADATA_KEY}' metadata, and the folder holds "
                f"{len(onnx_files)} graphs: a graph served without it is the only one"
            )
        spec = describe(onnx_files[0], read_sidecar(folder / SIDECAR_NAME) or sidecar)
    graph_files = {role: folder / file for role, file in spec.graphs.items()}
    for role, path in graph_files.items():
        if not path.is_file():
            raise ValueError(f"graph '{role}' file {path.name} is missing")
    batch_axes = {role: spec.batch_axes(role) for role in spec.graphs}
    runtime = ModelRuntime(name, version, graph_files, settings, batch_axes)
    for role in spec.graphs:
        for kind, found, expected in (
            ("inputs", runtime.input_names(role), spec.graph_inputs[role]),
            ("outputs", runtime.output_names(role), spec.graph_outputs[role]),
        ):
            if found != expected:
                raise ValueError(f"graph '{role}' has {kind} {found}; its spec says {expected}")
    return LoadedVersion(name, version, spec, runtime, task_for(spec, settings))


class Repository:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = Path(settings.model_repository)
        # name -> version -> the loaded version, or the reason it could not be loaded
        self._models: dict[str, dict[str, LoadedVersion | str]] = {}

    def load(self) -> None:
        """Scan the root and load every version (blocking: call it off the event loop)."""
        if not self.root.is_dir():
            raise UsageError(f"model repository {self.root} is not a folder")
        for model_folder in sorted(path for path in self.root.iterdir() if path.is_dir()):
            versions = self._models.setdefault(model_folder.name, {})
            try:
                sidecar = read_sidecar(model_folder / SIDECAR_NAME)
            except ValueError as error:
                sidecar, broken = None, f"failed to load: {error}"
            else:
                broken = ""
            for version_folder in sorted(model_folder.iterdir()):
                if version_folder.is_dir() and version_folder.name.isdigit():
                    version = str(int(version_folder.name))
                    versions[version] = broken or self._load(
                        model_folder.name, version, version_folder, sidecar
                    )

    def _load(
        self, name: str, version: str, folder: Path, sidecar: Sidecar | None
    ) -> LoadedVersion | str:
        start = time.perf_counter()
        try:
            loaded = load_version(name, version, folder, self.settings, sidecar)
        except Exception as error:  # any broken model: report it, keep loading the rest
            log.exception("model %s version %s failed to load", name, version)
            return f"failed to load: {error}"
        seconds = time.perf_counter() - start
        spec = loaded.spec
        metrics.MODEL_LOAD_DURATION.labels(name, version).set(seconds)
        metrics.MODEL_INFO.labels(
            name, version, spec.task, spec.cell or "", loaded.runtime.provider
        ).set(1)
        log.info(
            "loaded %s version %s (%s) in %.3f s", name, version, loaded.runtime.provider, seconds
        )
        return loaded

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

    def get(self, name: str, version: str = "") -> LoadedVersion:
        """A loaded version; "" selects the newest. NotFound or Unavailable otherwise."""
        versions = self._get_model(name)
        if not version:
            loaded = self.versions(name)
            if not loaded:
                raise Unavailable(f"model '{name}' has no version that loaded")
            version = loaded[-1]
        entry = versions.get(version)
        if entry is None:
            raise NotFound(
                f"model '{name}' has no version '{version}'; "
                f"available versions: {sorted(versions, key=int)}"
            )
        if isinstance(entry, str):
            raise Unavailable(f"model '{name}' version {version} is unavailable: {entry}")
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

    def entries(self) -> list[RepositoryEntry]:
        return [
            RepositoryEntry(name, version, "READY")
            if isinstance(entry, LoadedVersion)
            else RepositoryEntry(name, version, "UNAVAILABLE", entry)
            for name in self.names()
            for version, entry in sorted(self._models[name].items(), key=lambda item: int(item[0]))
        ]

    def _get_model(self, name: str) -> dict[str, LoadedVersion | str]:
        if name not in self._models:
            raise NotFound(f"unknown model '{name}'; available models: {self.names()}")
        return self._models[name]
