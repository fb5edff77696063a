"""What lives once the models are loaded is frozen, out of the cyclic collector's walks, and
what dies while frozen is collected at the next settling: each load or unload."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from rnnserve.service import heap
from rnnserve.service.dataplane import DataPlane
from rnnserve.service.sessions import open_store
from rnnserve.service.settings import Settings


class Node:
    """An object in a reference cycle: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


def collected_walks(thing: object) -> bool:
    """Whether the collector's walks (its generations, not the frozen objects) hold it."""
    return any(held is thing for held in gc.get_objects())


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()


def test_settling_freezes_what_lives_so_collections_leave_it_out() -> None:
    node = Node()
    assert collected_walks(node)

    heap.settle()

    assert not collected_walks(node) and gc.get_freeze_count() > 0
    assert collected_walks(Node())  # what is made after goes through the collector as before


def test_a_cycle_that_died_frozen_is_collected_at_the_next_settling() -> None:
    node = Node()
    heap.settle()
    dead = weakref.ref(node)
    del node
    gc.collect()
    assert dead() is not None  # frozen: no collection sees it

    heap.settle()

    assert dead() is None


def test_a_data_planes_models_are_frozen_once_loaded_and_freed_once_unloaded(
    tiny_repository: Path,
) -> None:
    settings = Settings(
        model_repository=tiny_repository, model_control_mode="explicit", load_model=["sine-lstm"]
    )
    with asyncio.Runner() as runner:
        plane = DataPlane(settings, open_store(settings))
        gc.unfreeze()
        runner.run(plane.load())
        version = plane.repository.entries_of("sine-lstm")["1"]
        assert not collected_walks(version) and not collected_walks(version.runtime)
        # The version's ONNX Runtime session (its runtime, compiled, takes no weak reference).
        gone = weakref.ref(next(iter(version.runtime.sessions.values())))
        del version

        runner.run(plane.unload_model("sine-lstm", []))

        assert gone() is None
        runner.run(plane.close())
