"""`model.json`: what a user tells the server about a model that its graph does not say.

A sidecar is optional. It may sit in a model's folder (`<repository>/<name>/model.json`:
for every version, and the only place for `version_policy`) or beside a version's graph
(`<repository>/<name>/<version>/model.json`: for that version, instead of the model's).
`rnnserve import` reads the one beside the graph it imports. Every field is optional;
unknown fields are refused, so that a misspelt hint is never silently ignored:

    {
      "inputs":  {"features": {"batch_axis": 0, "sequence_axis": 1}},
      "outputs": {"logits": {"batch_axis": 0, "sequence_axis": 1}},
      "states":  [{"input": "state_in", "output": "state_out", "batch_axis": 1}],
      "version_policy": {"latest": {"num_versions": 2}},
      "dynamic_batching": {"preferred_batch_size": [4, 8], "max_queue_delay_microseconds": 100,
                           "max_batch_size": 16}
    }

- `inputs`, `outputs`: per data tensor (not a state), its batch axis and its sequence
  (time) axis; `"sequence_axis": null` says the tensor has none (one value per row).
- `states`: the state pairs, each input with the output that returns it; the batch axis
  defaults to the state's one dynamic dimension. `[]` says the model keeps no state.
- `version_policy`: Triton's, in JSON: `{"latest": {"num_versions": N}}`,
  `{"specific": {"versions": [1, 3]}}` or `{"all": {}}` (the default: every version).
- `dynamic_batching`: concurrent stateless requests of a version run as one batch (Triton's
  dynamic_batching, with its knobs; `max_batch_size`: the most rows a batch gathers). Its
  presence turns batching on for the model whatever `rnnserve serve --dynamic-batching`
  says; a knob left out takes the flag's value. Only in the model's folder, as
  `version_policy`.

A sidecar that does not parse or validate makes its model (or version) UNAVAILABLE with the
reason; it never stops the server.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SIDECAR_NAME = "model.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AxesHint(_Strict):
    batch_axis: int | None = Field(None, ge=0)
    sequence_axis: int | None = Field(None, ge=0)  # given as null: the tensor has none

    @property
    def sequence_axis_given(self) -> bool:
        return "sequence_axis" in self.model_fields_set


class StateHint(_Strict):
    input: str
    output: str
    batch_axis: int | None = Field(None, ge=0)


class Latest(_Strict):
    num_versions: int = Field(ge=1)


class Specific(_Strict):
    versions: list[int] = Field(min_length=1)


class All(_Strict):
    pass


class VersionPolicy(_Strict):
    """Which of a model's versions are loaded (Triton's ModelVersionPolicy)."""

    latest: Latest | None = None
    specific: Specific | None = None
    all: All | None = None

    @model_validator(mode="after")
    def _one_choice(self) -> VersionPolicy:
        chosen = [name for name in ("latest", "specific", "all") if getattr(self, name)]
        if len(chosen) != 1:
            raise ValueError("give exactly one of latest, specific or all")
        return self

    def select(self, versions: list[int]) -> list[int]:
        """The versions to load among those present, oldest first."""
        if self.latest is not None:
            return sorted(versions)[-self.latest.num_versions :]
        if self.specific is not None:
            return sorted(set(versions) & set(self.specific.versions))
        return sorted(versions)

    def describe(self) -> str:
        if self.latest is not None:
            return f"latest {self.latest.num_versions}"
        if self.specific is not None:
            return f"versions {sorted(self.specific.versions)}"
        return "all versions"


ALL_VERSIONS = VersionPolicy(all=All())


class DynamicBatchingHint(_Strict):
    """A model's dynamic batching, in Triton's names; None: the server's flag's value."""

    preferred_batch_size: list[int] | None = Field(None, min_length=1)
    max_queue_delay_microseconds: int | None = Field(None, ge=0)
    max_batch_size: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _positive_sizes(self) -> DynamicBatchingHint:
        if self.preferred_batch_size and min(self.preferred_batch_size) < 1:
            raise ValueError("preferred_batch_size: every size must be at least 1")
        return self


class Sidecar(_Strict):
    inputs: dict[str, AxesHint] = {}
    outputs: dict[str, AxesHint] = {}
    states: list[StateHint] | None = None  # None: found by matching inputs to outputs
    version_policy: VersionPolicy | None = None
    dynamic_batching: DynamicBatchingHint | None = None


def read_sidecar(path: Path) -> Sidecar | None:
    """The sidecar at `path`, None when there is none; ValueError naming the file and the
    field at fault when it does not parse or validate."""
    if not path.is_file():
        return None
    try:
        return Sidecar.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: {error}") from None
    except ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(part) for part in problem["loc"]) or "the document"
        raise ValueError(f"{path}: {where}: {problem['msg']}") from None
