"""One module per task, named as the server task it trains models for
(service/tasks/<name>.py): both sides register under that one name. Each module provides
what `ExportTask` (export/tasks/base.py) lists. Importing a task module imports torch;
NAMES does not."""

from __future__ import annotations

import importlib
import pkgutil
from typing import cast

from rnnserve.export.tasks.base import ExportTask
from rnnserve.protocol.errors import UsageError

NAMES = tuple(
    sorted(module.name for module in pkgutil.iter_modules(__path__) if module.name != "base")
)


def task_module(name: str) -> ExportTask:
    if name not in NAMES:
        raise UsageError(f"unknown task {name!r}: expected one of {', '.join(NAMES)}")
    return cast(ExportTask, importlib.import_module(f"{__name__}.{name}"))
