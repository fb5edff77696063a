"""One module per task, each with the same functions: build_model, train, evaluate,
quality_ok, graphs, spec_fields and the constant QUALITY_NAME."""

from __future__ import annotations

from types import ModuleType

from export.tasks import seq2seq, sine, tagger

TASK_MODULES: dict[str, ModuleType] = {"sine": sine, "tagger": tagger, "seq2seq": seq2seq}
