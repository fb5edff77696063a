"""Model control: which versions are loaded, and their loading and unloading while the
server runs, in Triton's three modes (`--model-control-mode`):

- none: every model of the repository is loaded at start, then nothing changes;
- poll: likewise, then every `--repository-poll-s` seconds the folders are read again:
  versions added (or brought into the version policy) load, versions removed (or left out)
  unload, a version that failed is tried again once its files change;
- explicit: the models named by `--load-model` load at start ("*": all), then only
  RepositoryModelLoad (the model's folder read again, as poll does for one model) and
  RepositoryModelUnload (every version of the model) change anything.

A version number names one graph for the life of the process: a loaded version is never
reloaded in place, and a version unloaded then found with other files is refused (add the
change as a new version), since its sessions' states belong to the graph that computed
them. Unloading takes a version out of the repository first, so no new request gets it,
lets the requests it has in flight finish (within the grace period), then stops its
batchers; its sessions are refused while it is unloaded, and go on if the same files load
again, as they do across a restart with a shared state store. Loading runs in a compute
thread; one change at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable

from rnnserve.service import heap, metrics
from rnnserve.service.dataplane.compute import Compute
from rnnserve.service.errors import FailedPrecondition, NotFound
from rnnserve.service.repository import (
    Failed,
    Fingerprint,
    LoadedVersion,
    ModelFolder,
    NotLoaded,
    Repository,
    load_version,
)
from rnnserve.service.settings import Settings

log = logging.getLogger(__name__)

ALL_MODELS = "*"


class ModelControl:
    def __init__(
        self,
        settings: Settings,
        repository: Repository,
        compute: Compute,
        changed: Callable[[], Awaitable[None]],
    ) -> None:
        self.settings = settings
        self.repository = repository
        self.compute = compute
        self._changed = changed  # called after every change, for health to follow
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None
        self._served: dict[tuple[str, str], str] = {}  # (name, version) -> digest, once loaded
        self._settled = True  # no version loaded or unloaded since the heap settled

    async def start(self) -> None:
        """Loads the models the mode loads at start; in poll mode, starts polling."""
        await self.compute.load(self.repository.check_root)
        names = await self.compute.load(self.repository.folder_names)
        chosen = self.settings.load_model
        explicit = self.settings.model_control_mode == "explicit" and ALL_MODELS not in chosen
        async with self._lock:
            for name in names:
                if explicit and name not in chosen:
                    await self._list_unloaded(name)
                else:
                    await self._sync(name, retry=True)
        await self._announce()
        if self.settings.model_control_mode == "poll":
            self._poller = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        self._stopping.set()
        if self._poller is not None:
            await self._poller

    # Triton's RepositoryModelLoad and RepositoryModelUnload.

    async def load(self, name: str) -> None:
        """Reads the model's folder again and loads what its version policy wants; raises
        FailedPrecondition naming each version that failed."""
        self._check_explicit("RepositoryModelLoad")
        async with self._lock:
            folder = await self.compute.load(functools.partial(self.repository.scan, name))
            if folder is None:
                raise NotFound(
                    f"no model folder '{name}' in the repository; models there: "
                    f"{await self.compute.load(self.repository.folder_names)}"
                )
            failures = await self._sync(name, retry=True, folder=folder)
        await self._announce()
        if failures:
            raise FailedPrecondition(f"model '{name}' failed to load: {'; '.join(failures)}")

    async def unload(self, name: str) -> None:
        """Unloads every version of the model, once their requests in flight finished."""
        self._check_explicit("RepositoryModelUnload")
        async with self._lock:
            entries = self.repository.entries_of(name)
            if not entries:
                raise NotFound(f"unknown model '{name}'; models: {self.repository.names()}")
            for entry in entries.values():
                if isinstance(entry, LoadedVersion):
                    await self._unload(entry, "unloaded")
        await self._announce()

    def _check_explicit(self, rpc: str) -> None:
        mode = self.settings.model_control_mode
        if mode == "explicit":
            return
        remedy = (
            "add or remove version folders: the server follows them"
            if mode == "poll"
            else "start the server with --model-control-mode explicit (or poll)"
        )
        raise FailedPrecondition(
            f"{rpc} needs --model-control-mode explicit; this server's is {mode}: {remedy}"
        )

    async def _announce(self) -> None:
        """After changes (or a poll that may have made none): the heap settled if versions
        came or went (service/heap.py), then the watchers told."""
        if not self._settled:
            heap.settle()
            self._settled = True
        await self._changed()

    # Polling.

    async def _poll(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.repository_poll_s)
            if self._stopping.is_set():
                return
            try:
                async with self._lock:
                    names = await self.compute.load(self.repository.folder_names)
                    for name in sorted({*names, *self.repository.names()}):
                        await self._sync(name, retry=False)
                await self._announce()
            except Exception:  # a scan that failed (a folder vanishing mid-read): next time
                log.exception("polling the model repository failed")

    # Changes (under the lock).

    async def _list_unloaded(self, name: str) -> None:
        """Explicit mode: a model not loaded at start is listed, each version not loaded."""
        folder = await self.compute.load(functools.partial(self.repository.scan, name))
        for version in folder.versions if folder else ():
            reason = "not loaded: load it with RepositoryModelLoad (explicit model control)"
            self.repository.set(name, version, NotLoaded(reason))

    async def _sync(
        self, name: str, *, retry: bool, folder: ModelFolder | None = None
    ) -> list[str]:
        """Brings the model's versions to what its folder and version policy want; returns
        the reasons of the wanted versions that failed. `retry`: try failed versions again
        even if their files are unchanged."""
        if folder is None:
            folder = await self.compute.load(functools.partial(self.repository.scan, name))
        entries = self.repository.entries_of(name)
        if folder is None:  # the model's folder is gone
            for version, entry in entries.items():
                if isinstance(entry, LoadedVersion):
                    await self._unload(entry, "unloaded: the model's folder was removed")
                elif isinstance(entry, Failed):
                    self.repository.set(name, version, NotLoaded("its folder was removed"))
            return []
        if folder.problem:  # the model's sidecar: versions loaded stay as they are
            for version in folder.versions:
                if not isinstance(entries.get(version), LoadedVersion):
                    self.repository.set(name, version, Failed(folder.problem))
            return [folder.problem]
        self.repository.set_policy(name, folder.policy)
        wanted = folder.wanted()
        left_out = f"not in the version policy ({folder.policy.describe()})"
        for version, entry in entries.items():
            gone = version not in folder.versions
            if isinstance(entry, LoadedVersion) and version not in wanted:
                why = "its folder was removed" if gone else left_out
                await self._unload(entry, f"unloaded: {why}")
            elif isinstance(entry, Failed) and gone:
                self.repository.set(name, version, NotLoaded("its folder was removed"))
        for version in folder.versions:
            if version not in wanted and not isinstance(entries.get(version), LoadedVersion):
                self.repository.set(name, version, NotLoaded(f"not loaded: {left_out}"))
        failures = []
        for version in wanted:
            held = entries.get(version)
            if isinstance(held, LoadedVersion):
                continue
            fingerprint = await self.compute.load(functools.partial(folder.fingerprint, version))
            if isinstance(held, Failed) and held.fingerprint == fingerprint and not retry:
                continue
            loaded = await self._load(folder, version, fingerprint)
            if isinstance(loaded, Failed):
                failures.append(f"version {version}: {loaded.reason}")
        return failures

    async def _load(
        self, folder: ModelFolder, version: str, fingerprint: Fingerprint
    ) -> LoadedVersion | Failed:
        name = folder.name
        start = time.perf_counter()
        load = functools.partial(
            load_version, name, version, folder.versions[version], self.settings, folder.sidecar
        )
        try:
            digest = await self.compute.load(functools.partial(folder.digest, version))
            served = self._served.get((name, version), digest)
            if served != digest:
                raise ValueError(
                    f"version {version} served other files before: sessions may hold states "
                    f"of that graph; add the change as a new version"
                )
            loaded = await self.compute.load(load)
        except Exception as error:  # a broken version: report it, keep the others
            log.error("model %s version %s failed to load: %s", name, version, error)
            log.debug("model %s version %s failed to load", name, version, exc_info=error)
            failed = Failed(f"failed to load: {error}", fingerprint)
            self.repository.set(name, version, failed)
            return failed
        self._served[(name, version)] = digest
        seconds = time.perf_counter() - start
        spec = loaded.spec
        metrics.MODEL_LOAD_DURATION.labels(name, version).set(seconds)
        metrics.MODEL_INFO.labels(
            name, version, spec.task, spec.cell or "", loaded.runtime.provider
        ).set(1)
        self.compute.start_batchers([loaded])
        self.repository.set(name, version, loaded)
        self._settled = False
        log.info(
            "loaded %s version %s (%s) in %.3f s", name, version, loaded.runtime.provider, seconds
        )
        return loaded

    async def _unload(self, model: LoadedVersion, reason: str) -> None:
        self.repository.set(model.name, model.version, NotLoaded(reason))
        self._settled = False
        if not await model.in_flight.idle(self.settings.grace_period_s):
            log.warning(
                "unloading %s version %s with %d requests still in flight after %s s",
                model.name, model.version, model.in_flight.count, self.settings.grace_period_s,
            )  # fmt: skip
        await self.compute.stop_batchers(model)
        spec = model.spec
        metrics.MODEL_LOAD_DURATION.remove(model.name, model.version)
        metrics.MODEL_INFO.remove(
            model.name, model.version, spec.task, spec.cell or "", model.runtime.provider
        )
        log.info("%s version %s %s", model.name, model.version, reason)
