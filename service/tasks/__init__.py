"""Per-task logic: wire tensors <-> graph feeds, validation, decoding."""

from __future__ import annotations

from service.model_spec import ModelSpec
from service.settings import Settings
from service.tasks.base import Task
from service.tasks.seq2seq import Seq2SeqTask
from service.tasks.sine import SineTask
from service.tasks.tagger import TaggerTask

TASKS: dict[str, type[Task]] = {"sine": SineTask, "tagger": TaggerTask, "seq2seq": Seq2SeqTask}


def task_for(spec: ModelSpec, settings: Settings) -> Task:
    return TASKS[spec.task](spec, settings)
