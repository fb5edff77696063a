"""The build CI tests and the images ship (RNNSERVE_COMPILED=1, read by
scripts/bootstrap.sh): the modules a request runs through are mypyc's extension modules, as
service/pyproject.toml lists them; an editable install runs the same modules as Python."""

from __future__ import annotations

import importlib
import os
import sysconfig

import pytest
from compiled_build import compiled_modules

COMPILED_BUILD = os.environ.get("RNNSERVE_COMPILED") == "1"
EXTENSION = sysconfig.get_config_var("EXT_SUFFIX")


@pytest.mark.parametrize("name", compiled_modules())
def test_the_hot_modules_are_compiled_in_the_compiled_build(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__file__ is not None
    if COMPILED_BUILD:
        assert module.__file__.endswith(EXTENSION), f"{name} runs as Python: {module.__file__}"
    else:
        assert module.__file__.endswith(".py"), f"{name} is compiled in an editable install"


@pytest.mark.parametrize(
    "name", ["rnnserve.service.grpc.servicer", "rnnserve.service.dataplane.streaming"]
)
def test_what_mypyc_cannot_compile_stays_python(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__file__ is not None and module.__file__.endswith(".py")


def test_every_task_is_compiled_with_the_task_it_subclasses() -> None:
    # A compiled class's methods refuse the instances of an interpreted subclass: a task
    # module left off the list would fail at its first request in the compiled build.
    from rnnserve.service.tasks import TASKS

    compiled = set(compiled_modules())
    assert "rnnserve.service.tasks.base" in compiled
    for name, task in TASKS.items():
        assert task.__module__ in compiled, f"task {name} ({task.__module__}) is not compiled"
