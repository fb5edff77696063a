"""The model's self-description (model/spec.py) written into a graph's ONNX
metadata, under the key the server reads."""

from __future__ import annotations

from pathlib import Path

import onnx

from rnnserve.model.spec import METADATA_KEY, ModelSpec


def write_spec(path: Path, spec: ModelSpec) -> None:
    model = onnx.load(str(path))
    set_spec(model, spec)
    onnx.save(model, str(path))


def set_spec(model: onnx.ModelProto, spec: ModelSpec) -> None:
    """The spec in the model's metadata, in place of any it carried."""
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=METADATA_KEY, value=spec.to_json())
