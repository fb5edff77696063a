"""Per-task logic: wire tensors <-> graph feeds, validation, decoding.

Each task is one module here whose `Task` subclass registers itself under its name
(service/tasks/base.py); every module of this package is imported below, so adding a task
is adding its module.
"""

from __future__ import annotations

import importlib
import pkgutil

from rnnserve.model.spec import ModelSpec
from rnnserve.service.settings import Settings
from rnnserve.service.tasks.base import TASKS, Task

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def task_for(spec: ModelSpec, settings: Settings) -> Task:
    """The task that serves `spec`; ValueError when none is registered or the spec lacks
    what its task needs."""
    task = TASKS.get(spec.task)
    if task is None:
        raise ValueError(f"unknown task {spec.task!r}; this server serves {sorted(TASKS)}")
    task.check_spec(spec)
    return task(spec, settings)
