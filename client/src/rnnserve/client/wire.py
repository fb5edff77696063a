"""What every client does alike, without I/O: requests built from numpy arrays (a
ModelInferRequest, which the REST clients send as REST's JSON: client/rest_wire.py),
responses decoded into them (text outputs as `str`), the inputs of the default models and
of multi-session requests.

Tensor encoding is rnnserve.protocol.codec's, shared with the server, so both ends agree
on the wire format by construction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from rnnserve.client.errors import Internal, from_stream_reply
from rnnserve.client.metadata import ModelMetadata
from rnnserve.protocol import codec
from rnnserve.protocol import messages as pb
from rnnserve.protocol.codec import Parameter
from rnnserve.protocol.sequences import SEQUENCE_ERROR

Inputs = Mapping[str, np.ndarray | str | list[Any]]


@dataclass
class InferResult:
    """One response: outputs by name and its parameters. A BYTES output holds `str` where
    the model's metadata says it is text (unless the client was made with
    `decode_text=False`), `bytes` otherwise."""

    model_name: str
    model_version: str
    id: str = ""
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    parameters: dict[str, Parameter] = field(default_factory=dict)


def sine_input(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """A sine model's `x` from one sequence ([seq]), a batch ([batch, seq]) or [b, s, 1]."""
    x = np.asarray(values, dtype=np.float32)
    if x.ndim == 1:
        x = x[np.newaxis, :]
    if x.ndim == 2:
        x = x[..., np.newaxis]
    return x


def build_request(
    model: str,
    inputs: Inputs,
    outputs: Sequence[str] = (),
    parameters: Mapping[str, Parameter] | None = None,
    version: str = "",
) -> Any:
    """A ModelInferRequest carrying `inputs` as raw tensor data."""
    message = pb.ModelInferRequest(model_name=model, model_version=version)
    codec.parameters_to_proto(parameters or {}, message.parameters)
    for name, data in inputs.items():
        datatype, array = codec.wire_array(name, data)
        message.inputs.add(name=name, datatype=datatype, shape=array.shape)
        message.raw_input_contents.append(codec.raw_of(datatype, array))
    for name in outputs:
        message.outputs.add(name=name)
    return message


def tensors_of(items: Any, raw: Sequence[bytes]) -> list[tuple[str, str, np.ndarray]]:
    """The tensors of a message (a request's inputs, a response's outputs), each's name,
    datatype and array, from its raw or its typed contents, as any sender may put them
    (BYTES as `bytes`)."""
    return [
        (
            item.name,
            item.datatype,
            codec.array_from_raw(item.name, item.datatype, list(item.shape), raw[index])
            if raw
            else codec.array_from_contents(
                item.name, item.datatype, list(item.shape), item.contents
            ),
        )
        for index, item in enumerate(items)
    ]


def decode_response(message: Any) -> InferResult:
    """A ModelInferResponse's outputs (BYTES outputs as `bytes`)."""
    tensors = tensors_of(message.outputs, message.raw_output_contents)
    return InferResult(
        model_name=message.model_name,
        model_version=message.model_version,
        id=message.id,
        outputs={name: data for name, _, data in tensors},
        parameters=codec.parameters_from_proto(message.parameters, "response"),
    )


def decode_stream_reply(reply: Any) -> InferResult:
    """A ModelStreamInferResponse's result; the error it reports, raised (the stream stays
    open: the caller may go on sending)."""
    if reply.error_message:
        raise from_stream_reply(reply)
    return decode_response(reply.infer_response)


class TextOutputs:
    """Which BYTES outputs of each model version are text, as its metadata says (learnt
    once per version), and results with those outputs decoded to `str`."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._known: dict[tuple[str, str], frozenset[str]] = {}

    def unknown(self, result: InferResult) -> tuple[str, str] | None:
        """The model and version whose metadata decoding `result` needs first, if any."""
        if not self.enabled or all(a.dtype != object for a in result.outputs.values()):
            return None
        key = (result.model_name, result.model_version)
        return None if key in self._known else key

    def learn(self, key: tuple[str, str], metadata: ModelMetadata) -> None:
        self._known[key] = metadata.text_outputs

    def decoded(self, result: InferResult) -> InferResult:
        """`result` with its text outputs as `str` (as it is when nothing needs decoding)."""
        texts = self._known.get((result.model_name, result.model_version), frozenset())
        if not self.enabled or not texts.intersection(result.outputs):
            return result
        outputs = {
            name: _as_str(name, data) if name in texts and data.dtype == object else data
            for name, data in result.outputs.items()
        }
        return replace(result, outputs=outputs)


def _as_str(name: str, data: np.ndarray) -> np.ndarray:
    try:
        items = [bytes(item).decode() for item in data.reshape(-1)]
    except UnicodeDecodeError:
        raise Internal(f"output '{name}' is text by the model's metadata, but not UTF-8") from None
    return codec.object_array(items, data.shape)


def session_controls(
    ids: Sequence[int] | Sequence[str],
    start: bool | Sequence[bool],
    end: bool | Sequence[bool],
    offsets: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """The control inputs of a multi-session request: row i is a step of session ids[i].
    Integer ids go as UINT64, string ids as BYTES; a single flag applies to every row;
    `offsets` (each row's sequence's time steps before it) go as INT64."""
    rows = len(ids)
    all_ints = all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
    controls = {
        "sequence_id": np.asarray(ids, np.uint64) if all_ints else np.asarray(ids, object),
        "sequence_start": np.broadcast_to(np.asarray(start, np.bool_), (rows,)).copy(),
        "sequence_end": np.broadcast_to(np.asarray(end, np.bool_), (rows,)).copy(),
    }
    if offsets is not None:
        controls["sequence_offset"] = np.asarray(offsets, np.int64)
    return controls


def row_errors(result: InferResult) -> tuple[dict[str, np.ndarray], list[str]]:
    """A multi-session response's outputs, and each row's error taken out of them ("" for
    a row that stepped)."""
    outputs = dict(result.outputs)
    errors = outputs.pop(SEQUENCE_ERROR).reshape(-1)
    return outputs, [e if isinstance(e, str) else bytes(e).decode() for e in errors]


def text_of(data: np.ndarray) -> str:
    """The first element of a text output, `str` whether or not the client decoded it."""
    item = data.reshape(-1)[0]
    return item if isinstance(item, str) else bytes(item).decode()


def sine_result(
    outputs: dict[str, np.ndarray], pairs: dict[str, str]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A sine model's `y`, and its final states keyed by the state inputs they feed."""
    return outputs["y"], {state_in: outputs[state_out] for state_in, state_out in pairs.items()}


def translate_parameters(max_output_length: int | None) -> dict[str, Parameter]:
    return {} if max_output_length is None else {"max_output_length": max_output_length}
