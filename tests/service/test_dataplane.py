"""The data plane over the nine tiny default models, in process with real ONNX Runtime.

Every answer is compared with a direct ONNX Runtime run of the same graph; every bad
input is refused with INVALID_ARGUMENT before ORT sees it (batch 0 and sequence length 0
would abort the process), and the data plane still answers afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client import REGISTRY

from rnnserve.model.sidecar import ALL_VERSIONS
from rnnserve.model.spec import ModelSpec
from rnnserve.service.dataplane import DataPlane
from rnnserve.service.errors import InvalidArgument, NotFound, ServiceError, Unavailable
from rnnserve.service.sessions import open_store
from rnnserve.service.settings import Settings
from rnnserve.service.types import (
    ConfigState,
    ConfigTensor,
    InferRequest,
    InferResponse,
    SequenceBatching,
    SequenceControl,
    Tensor,
)

CELLS = ("rnn", "lstm", "gru")
MAX_BATCH = 8
MAX_SEQUENCE = 64


def fp32(name: str, data: np.ndarray) -> Tensor:
    data = np.asarray(data, np.float32)
    return Tensor(name, "FP32", data.shape, data)


def int64(name: str, data: np.ndarray) -> Tensor:
    data = np.asarray(data, np.int64)
    return Tensor(name, "INT64", data.shape, data)


def text(name: str, rows: list[str] | list[bytes]) -> Tensor:
    data = np.array([row.encode() if isinstance(row, str) else row for row in rows], object)
    return Tensor(name, "BYTES", data.shape, data)


def strings(tensor: Tensor) -> list[str]:
    return [row.decode() for row in tensor.data.reshape(-1)]


def outputs(response: InferResponse) -> dict[str, Tensor]:
    return {tensor.name: tensor for tensor in response.outputs}


class Plane:
    """A loaded DataPlane driven from synchronous tests through one event loop."""

    def __init__(self, plane: DataPlane, runner: asyncio.Runner) -> None:
        self.plane = plane
        self.runner = runner

    def infer(self, model: str, *inputs: Tensor, **fields: object) -> InferResponse:
        request = InferRequest(model, inputs=list(inputs), **fields)  # type: ignore[arg-type]
        return self.runner.run(self.plane.infer(request))

    def stream(self, model: str, *inputs: Tensor, **fields: object) -> list[InferResponse]:
        request = InferRequest(model, inputs=list(inputs), **fields)  # type: ignore[arg-type]

        async def collect(responses: AsyncIterator[InferResponse]) -> list[InferResponse]:
            return [response async for response in responses]

        return self.runner.run(collect(self.plane.stream_infer(request)))


@pytest.fixture(scope="module")
def plane(tiny_repository: Path) -> Iterator[Plane]:
    settings = Settings(
        model_repository=tiny_repository, max_batch_size=MAX_BATCH,
        max_sequence_length=MAX_SEQUENCE,
    )  # fmt: skip
    with asyncio.Runner() as runner:
        data_plane = DataPlane(settings, open_store(settings))
        runner.run(data_plane.load())
        yield Plane(data_plane, runner)
        runner.run(data_plane.close())


class Reference:
    """Direct ONNX Runtime runs of a model's graphs: what the data plane must reproduce."""

    def __init__(self, repository: Path, name: str) -> None:
        folder = repository / name / "1"
        session = ort.InferenceSession(str(next(folder.glob("*.onnx"))))
        self.spec = ModelSpec.from_json(session.get_modelmeta().custom_metadata_map["rnnserve"])
        graphs = self.spec.graphs.items()
        self.sessions = {role: ort.InferenceSession(str(folder / file)) for role, file in graphs}

    def run(self, role: str, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        session = self.sessions[role]
        names = [node.name for node in session.get_outputs()]
        return dict(zip(names, session.run(None, feeds), strict=True))

    def zeros(self, batch: int) -> dict[str, np.ndarray]:
        return self.spec.zero_state(batch)

    def token_ids(self, word: str) -> list[int]:
        assert self.spec.vocab is not None
        return [self.spec.vocab.index(char) for char in word]


# Metadata.


def test_server_metadata_names_the_server_and_its_extensions(plane: Plane) -> None:
    metadata = plane.plane.server_metadata()
    assert metadata.name == "rnnserve"
    assert {"model_repository", "statistics", "model_configuration"} <= set(metadata.extensions)


def test_all_nine_default_models_are_ready(plane: Plane) -> None:
    names = [f"{task}-{cell}" for task in ("sine", "tagger", "seq2seq") for cell in CELLS]
    assert plane.plane.ready() and plane.plane.live()
    assert set(names) <= set(plane.plane.model_names())
    for name in names:
        assert plane.plane.model_ready(name) and plane.plane.model_ready(name, "1")
    assert not plane.plane.model_ready("no-such-model")
    assert not plane.plane.model_ready("sine-lstm", "9")
    index = {(entry.name, entry.version): entry.state for entry in plane.plane.repository_index()}
    assert all(index[(name, "1")] == "READY" for name in names)


def test_sine_metadata_lists_x_and_names_its_states_and_session_controls(plane: Plane) -> None:
    metadata = plane.plane.model_metadata("sine-lstm")

    # As Triton lists a model with implicit state: the plain tensors only (perf_analyzer
    # sends every input listed); parameters name the states and the control tensors.
    assert [(m.name, m.datatype, m.shape, m.optional) for m in metadata.inputs] == [
        ("x", "FP32", (-1, -1, 1), False)
    ]
    assert [(m.name, m.shape) for m in metadata.outputs] == [("y", (-1, -1, 1))]
    parameters = metadata.parameters
    assert (parameters["state_inputs"], parameters["state_outputs"]) == ("h0,c0", "hn,cn")
    assert parameters["control_inputs"] == (
        "sequence_id,sequence_start,sequence_end,sequence_offset"
    )
    assert parameters["control_outputs"] == "sequence_error,sequence_offset"
    assert metadata.versions == ["1"] and metadata.platform == "onnxruntime_onnx"
    assert parameters["provider"] == "CPUExecutionProvider"


def test_tagger_and_seq2seq_metadata_list_their_text_tensors(plane: Plane) -> None:
    tagger = plane.plane.model_metadata("tagger-gru")
    assert [(m.name, m.datatype, m.shape, m.optional) for m in tagger.inputs] == [
        ("text", "BYTES", (-1, 1), False), ("tokens", "INT64", (-1, -1), True),
    ]  # fmt: skip
    assert [(m.name, m.datatype) for m in tagger.outputs] == [
        ("text_out", "BYTES"), ("tokens_out", "INT64"), ("logits", "FP32"),
    ]  # fmt: skip
    assert tagger.outputs[2].shape == (-1, -1, 4)
    assert tagger.parameters["state_inputs"] == "h0"
    seq2seq = plane.plane.model_metadata("seq2seq-rnn")
    assert [(m.name, m.datatype, m.shape) for m in seq2seq.inputs] == [("text", "BYTES", (-1, 1))]
    assert [(m.name, m.datatype, m.shape) for m in seq2seq.outputs] == [
        ("text_out", "BYTES", (-1, 1)),
        ("confidence", "FP32", (-1, 1)),
    ]
    assert seq2seq.parameters["max_output_length"] == 16
    assert {"n", "N"} <= set(str(seq2seq.parameters["vocab"]))  # upper case reads as lower
    assert "control_inputs" not in seq2seq.parameters  # no multi-session requests


def test_model_config_is_tritons_view_of_a_batched_model_with_state(plane: Plane) -> None:
    config = plane.plane.model_config("sine-lstm")
    hidden = plane.plane.model_metadata("sine-lstm").parameters["hidden_size"]
    assert isinstance(hidden, int)

    assert (config.name, config.platform, config.backend) == (
        "sine-lstm", "onnxruntime_onnx", "onnxruntime",
    )  # fmt: skip
    assert config.max_batch_size == MAX_BATCH
    # Triton's dims leave the batch dimension out; states are not plain tensors.
    assert config.inputs == [ConfigTensor("x", "FP32", (-1, 1))]
    assert config.outputs == [ConfigTensor("y", "FP32", (-1, 1))]
    assert config.version_policy == ALL_VERSIONS  # no model.json says otherwise
    assert config.instance_kind == "CPU"
    assert config.max_queue_delay_us == 0  # no batching of sessions' steps
    assert config.sequence_batching == SequenceBatching(
        max_idle_us=60_000_000,  # session_idle_timeout_s
        states=[
            ConfigState("h0", "hn", "FP32", (1, hidden), starts_at_zeros=True),
            ConfigState("c0", "cn", "FP32", (1, hidden), starts_at_zeros=True),
        ],
        controls=[  # a multi-session request's control tensors; sequence_offset has no kind
            SequenceControl("sequence_id", "SEQUENCE_CORRID", "UINT64"),
            SequenceControl("sequence_start", "SEQUENCE_START", "BOOL"),
            SequenceControl("sequence_end", "SEQUENCE_END", "BOOL"),
        ],
    )
    assert config.parameters == {
        "provider": "CPUExecutionProvider", "task": "sine", "cell": "lstm",
        "state_batch_axes": "h0:1,c0:1",
    }  # fmt: skip


def test_model_config_of_seq2seq_has_sequences_but_no_session_rows(plane: Plane) -> None:
    config = plane.plane.model_config("seq2seq-gru", "1")

    assert config.inputs == [ConfigTensor("text", "BYTES", (1,))]  # [batch], written [1]
    assert config.sequence_batching is not None
    assert [state.input for state in config.sequence_batching.states] == ["h0"]
    assert config.sequence_batching.controls == []  # it answers a session at its end only
    with pytest.raises(NotFound, match="no version '7'"):
        plane.plane.model_config("seq2seq-gru", "7")


def test_unknown_model_or_version_is_not_found(plane: Plane) -> None:
    with pytest.raises(NotFound, match="unknown model 'sine-xyz'"):
        plane.plane.model_metadata("sine-xyz")
    with pytest.raises(NotFound, match="no version '7'"):
        plane.infer("sine-rnn", fp32("x", np.zeros((1, 2, 1))), model_version="7")


# Inference matches ONNX Runtime run directly.


@pytest.mark.parametrize("cell", CELLS)
def test_sine_matches_a_direct_ort_run(plane: Plane, tiny_repository: Path, cell: str) -> None:
    reference = Reference(tiny_repository, f"sine-{cell}")
    x = np.sin(np.linspace(0, 3, 2 * 7)).reshape(2, 7, 1).astype(np.float32)
    expected = reference.run("model", x=x, **reference.zeros(2))
    got = outputs(plane.infer(f"sine-{cell}", fp32("x", x)))
    assert set(got) == {"y", *reference.spec.state_outputs}
    for name, tensor in got.items():
        np.testing.assert_array_equal(tensor.data, expected[name])
        assert tensor.datatype == "FP32" and tensor.shape == expected[name].shape


def test_sine_carries_a_given_state_and_returns_only_what_was_asked(
    plane: Plane, tiny_repository: Path
) -> None:
    reference = Reference(tiny_repository, "sine-lstm")
    x = np.full((1, 3, 1), 0.5, np.float32)
    state = {name: np.full_like(value, 0.1) for name, value in reference.zeros(1).items()}
    expected = reference.run("model", x=x, **state)
    response = plane.infer(
        "sine-lstm", fp32("x", x), fp32("h0", state["h0"]), fp32("c0", state["c0"]), outputs=["cn"]
    )
    assert [tensor.name for tensor in response.outputs] == ["cn"]
    np.testing.assert_array_equal(response.outputs[0].data, expected["cn"])


@pytest.mark.parametrize("cell", CELLS)
def test_tagger_turns_hello_into_ohlol(plane: Plane, tiny_repository: Path, cell: str) -> None:
    response = plane.infer(f"tagger-{cell}", text("text", ["hello"]))
    got = outputs(response)
    assert strings(got["text_out"]) == ["ohlol"]
    assert got["text_out"].datatype == "BYTES" and got["text_out"].shape == (1,)
    assert set(got) == {"text_out", "hn", "cn"} if cell == "lstm" else {"text_out", "hn"}


def test_tagger_rows_of_different_lengths_match_running_each_row_alone(
    plane: Plane, tiny_repository: Path
) -> None:
    reference = Reference(tiny_repository, "tagger-lstm")
    words = ["hello", "he", "hell", "lo"]
    response = plane.infer(
        "tagger-lstm", text("text", words), outputs=["text_out", "tokens_out", "logits", "hn"]
    )
    got = outputs(response)
    assert got["logits"].shape == (4, 5, 4) and got["tokens_out"].shape == (4, 5)
    for row, word in enumerate(words):
        tokens = np.array([reference.token_ids(word)], np.int64)
        expected = reference.run("model", tokens=tokens, **reference.zeros(1))
        np.testing.assert_array_equal(got["logits"].data[row, : len(word)], expected["logits"][0])
        np.testing.assert_array_equal(got["hn"].data[:, row], expected["hn"][:, 0])
        assert list(got["tokens_out"].data[row, len(word) :]) == [-1] * (5 - len(word))
    assert strings(got["text_out"])[0] == "ohlol"


def test_tagger_accepts_tokens_and_tritons_batch_by_one_text(plane: Plane) -> None:
    by_tokens = outputs(plane.infer("tagger-gru", int64("tokens", [[1, 0, 2, 2, 3]])))
    assert set(by_tokens) == {"tokens_out", "hn"}
    triton_shape = np.array([[b"hello"]], object)
    response = plane.infer("tagger-gru", Tensor("text", "BYTES", (1, 1), triton_shape))
    text_out = outputs(response)["text_out"]
    assert text_out.shape == (1, 1) and strings(text_out) == ["ohlol"]
    vocab = plane.plane.model_metadata("tagger-gru").parameters["vocab"]
    assert vocab == "ehlo"
    assert [vocab[i] for i in by_tokens["tokens_out"].data[0]] == list("ohlol")


def greedy(reference: Reference, word: str, limit: int) -> str:
    """Greedy decoding, one row at a time, straight on ONNX Runtime."""
    spec = reference.spec
    assert spec.vocab is not None and spec.target_vocab is not None
    tokens = np.array([[spec.vocab.index(char) for char in word]], np.int64)
    state = reference.run("encoder", tokens=tokens, **reference.zeros(1))
    token = np.array([spec.bos_id], np.int64)
    decoded = ""
    for _ in range(limit):
        feeds = {pair.input: state[pair.output] for pair in spec.states}
        step = reference.run("decoder", token=token, **feeds)
        token = step["next_token"]
        if token[0] == spec.eos_id:
            break
        decoded += spec.target_vocab[token[0]]
        state = step
    return decoded


@pytest.mark.parametrize("cell", CELLS)
def test_seq2seq_decodes_greedily_like_ort_step_by_step(
    plane: Plane, tiny_repository: Path, cell: str
) -> None:
    reference = Reference(tiny_repository, f"seq2seq-{cell}")
    words = ["22 nov 2026", "11/22/26", "november 22, 2026"]
    got = strings(outputs(plane.infer(f"seq2seq-{cell}", text("text", words)))["text_out"])
    assert got == [greedy(reference, word, 16) for word in words]


def test_seq2seq_output_length_is_capped_by_the_request_parameter(plane: Plane) -> None:
    words = text("text", ["1/2/03", "march 3, 2050"])
    response = plane.infer("seq2seq-gru", words, parameters={"max_output_length": 3})
    assert all(len(row) <= 3 for row in strings(response.outputs[0]))


def test_seq2seq_streams_one_response_per_decoded_token(plane: Plane) -> None:
    word = ["22 nov 2026"]
    whole = strings(plane.infer("seq2seq-lstm", text("text", word)).outputs[0])[0]
    responses = plane.stream("seq2seq-lstm", text("text", word), id="r1")
    pieces = [strings(response.outputs[0])[0] for response in responses]
    assert "".join(pieces) == whole
    finals = [response.final for response in responses]
    assert finals == [False] * (len(responses) - 1) + [True]
    assert all(response.id == "r1" for response in responses)


def test_sine_and_tagger_stream_a_single_final_response(plane: Plane) -> None:
    (response,) = plane.stream("tagger-rnn", text("text", ["hello"]))
    assert strings(outputs(response)["text_out"]) == ["ohlol"]
    assert response.final
    (response,) = plane.stream("sine-gru", fp32("x", np.zeros((1, 2, 1))))
    assert response.final


def test_only_token_decoders_answer_a_stream_in_several_responses(plane: Plane) -> None:
    """What a stream sends through the unary path (one answer) and what through the
    streamed one: seq2seq alone decodes token by token; an unknown model is refused by
    either path alike."""
    once = {
        name: plane.plane.answers_once(name)
        for name in ("sine-lstm", "tagger-gru", "seq2seq-rnn", "no-such-model")
    }
    assert once == {
        "sine-lstm": True, "tagger-gru": True, "seq2seq-rnn": False, "no-such-model": True
    }  # fmt: skip


# Bad input: refused before ONNX Runtime sees it.

Case = tuple[str, Callable[[], InferRequest], type[ServiceError], str]


def request(model: str, *inputs: Tensor, **fields: object) -> Callable[[], InferRequest]:
    return lambda: InferRequest(model, inputs=list(inputs), **fields)  # type: ignore[arg-type]


X = fp32("x", np.zeros((2, 3, 1)))
TEXT = text("text", ["hello"])
BAD_INPUTS: list[Case] = [
    *[
        (f"sine-{cell} batch 0", request(f"sine-{cell}", fp32("x", np.zeros((0, 3, 1)))),
         InvalidArgument, "input 'x' has batch size 0; expected at least 1")
        for cell in CELLS
    ],
    *[
        (f"sine-{cell} sequence 0", request(f"sine-{cell}", fp32("x", np.zeros((2, 0, 1)))),
         InvalidArgument, "input 'x' has sequence length 0; expected at least 1")
        for cell in CELLS
    ],
    *[
        (f"tagger-{cell} tokens batch 0",
         request(f"tagger-{cell}", int64("tokens", np.zeros((0, 3)))),
         InvalidArgument, "input 'tokens' has batch size 0; expected at least 1")
        for cell in CELLS
    ],
    *[
        (f"tagger-{cell} tokens sequence 0",
         request(f"tagger-{cell}", int64("tokens", np.zeros((1, 0)))),
         InvalidArgument, "input 'tokens' has sequence length 0; expected at least 1")
        for cell in CELLS
    ],
    *[
        (f"seq2seq-{cell} text batch 0", request(f"seq2seq-{cell}", text("text", [])),
         InvalidArgument, "input 'text' has batch size 0; expected at least 1")
        for cell in CELLS
    ],
    ("empty string", request("tagger-gru", text("text", ["hello", ""])),
     InvalidArgument, "text[1] is empty; expected at least one character from 'ehlo'"),
    ("characters outside the vocabulary", request("tagger-lstm", text("text", ["hexzo"])),
     InvalidArgument,
     "text[0] has characters not in the model's vocabulary: 'x', 'z'; "
     "expected characters from 'ehlo'"),
    ("invalid UTF-8", request("seq2seq-gru", text("text", ["1/2/03", b"\xff\xfe"])),
     InvalidArgument, "text[1] is not valid UTF-8"),
    ("text too long", request("tagger-rnn", text("text", ["hello" * 13])),
     InvalidArgument, "input 'text[0]' has sequence length 65; expected at most 64"),
    ("batch over the limit", request("sine-rnn", fp32("x", np.zeros((9, 2, 1)))),
     InvalidArgument, "input 'x' has batch size 9; expected at most 8"),
    ("sequence over the limit", request("sine-gru", fp32("x", np.zeros((1, 65, 1)))),
     InvalidArgument, "input 'x' has sequence length 65; expected at most 64"),
    ("wrong datatype", request("sine-lstm", int64("x", np.zeros((2, 3, 1)))),
     InvalidArgument, "input 'x' has datatype INT64; expected FP32"),
    ("wrong rank", request("sine-lstm", fp32("x", np.zeros((2, 3)))),
     InvalidArgument, "input 'x' has shape [2, 3] (rank 2); expected rank 3"),
    ("wrong feature size", request("sine-rnn", fp32("x", np.zeros((2, 3, 2)))),
     InvalidArgument, "input 'x' has feature size (last dimension) 2; expected 1"),
    ("NaN in x", request("sine-rnn", fp32("x", np.array([[[0.0], [np.nan]]]))),
     InvalidArgument, "input 'x' contains NaN or infinity"),
    ("infinity in a longer x, checked by numpy",
     request("sine-rnn", fp32("x", np.append(np.zeros(19), np.inf).reshape(1, 20, 1))),
     InvalidArgument, "input 'x' contains NaN or infinity"),
    ("state batch differs from x", request("sine-gru", X, fp32("h0", np.zeros((1, 3, 8)))),
     InvalidArgument, "input 'h0' has shape [1, 3, 8]; expected [1, 2, 8]"),
    ("c0 on a GRU", request("sine-gru", X, fp32("c0", np.zeros((1, 2, 8)))),
     InvalidArgument, "unexpected input 'c0' for model 'sine-gru'"),
    ("missing x", request("sine-rnn"), InvalidArgument, "missing input 'x' for model 'sine-rnn'"),
    ("input twice", request("sine-rnn", X, X), InvalidArgument, "input 'x' appears more than once"),
    ("unknown output", request("sine-lstm", X, outputs=["z"]),
     InvalidArgument, "unknown output 'z' requested from model 'sine-lstm'"),
    ("text and tokens together",
     request("tagger-rnn", TEXT, int64("tokens", [[0, 1]])),
     InvalidArgument, "inputs 'text' and 'tokens' are alternatives"),
    ("token id out of range", request("tagger-rnn", int64("tokens", [[0, 4]])),
     InvalidArgument, "input 'tokens' has token id 4; expected ids from 0 to 3"),
    ("text as FP32", request("seq2seq-rnn", fp32("text", [1.0])),
     InvalidArgument, "input 'text' has datatype FP32; expected BYTES"),
    ("max_output_length not an integer",
     request("seq2seq-rnn", text("text", ["1/2/03"]), parameters={"max_output_length": "9"}),
     InvalidArgument, "parameter 'max_output_length' is '9'; expected a positive integer"),
    ("max_output_length zero",
     request("seq2seq-rnn", text("text", ["1/2/03"]), parameters={"max_output_length": 0}),
     InvalidArgument, "parameter 'max_output_length' is 0; expected a positive integer"),
    ("sequence_id of the wrong type", request("sine-rnn", X, parameters={"sequence_id": 1.5}),
     InvalidArgument, "sequence_id"),
    ("sequence_start not a bool",
     request("sine-rnn", X, parameters={"sequence_id": 1, "sequence_start": 1}),
     InvalidArgument, "sequence_start"),
    ("sequence_start without a sequence_id",
     request("sine-rnn", X, parameters={"sequence_start": True}),
     InvalidArgument, "sequence_start and sequence_end need a non-zero sequence_id"),
    ("sequence of batch 2",
     request("sine-lstm", X, parameters={"sequence_id": "s1", "sequence_start": True}),
     InvalidArgument, "(sequence_id 's1') has batch size 2; expected 1"),
    ("continuation of a sequence never started",
     request("tagger-gru", TEXT, parameters={"sequence_id": 404}),
     InvalidArgument, "a sequence must begin with sequence_start=true"),
    ("continuation sending its own state",
     request("sine-gru", fp32("x", np.zeros((1, 3, 1))), fp32("h0", np.zeros((1, 1, 8))),
             parameters={"sequence_id": 405}),
     InvalidArgument, "input 'h0' is accepted only with sequence_start=true"),
    ("unknown model", request("sine-nope", X), NotFound, "unknown model 'sine-nope'"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("model_request", "error", "message"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_is_refused_with_a_message_naming_it(
    plane: Plane, model_request: Callable[[], InferRequest], error: type, message: str
) -> None:
    for call in (plane.plane.infer, plane.plane.stream_infer):
        with pytest.raises(error) as raised:
            result = call(model_request())
            if isinstance(result, AsyncIterator):
                plane.runner.run(anext(result))
            else:
                plane.runner.run(result)
        assert type(raised.value) is error and message in raised.value.message


def test_after_bad_input_the_data_plane_still_answers(plane: Plane) -> None:
    assert len(BAD_INPUTS) >= 20
    for name in plane.plane.model_names():
        assert plane.plane.model_ready(name)
    assert strings(plane.infer("tagger-gru", TEXT).outputs[0]) == ["ohlol"]


def test_concurrent_requests_get_the_answers_they_would_get_alone(plane: Plane) -> None:
    inputs = [np.full((1, 4, 1), value, np.float32) for value in np.linspace(-1, 1, 24)]
    alone = [plane.infer("sine-gru", fp32("x", x)).outputs[0].data for x in inputs]

    async def together() -> list[InferResponse]:
        requests = [InferRequest("sine-gru", inputs=[fp32("x", x)]) for x in inputs]
        return await asyncio.gather(*(plane.plane.infer(r) for r in requests))

    for response, expected in zip(plane.runner.run(together()), alone, strict=True):
        np.testing.assert_array_equal(response.outputs[0].data, expected)


# Statistics, metrics, loading and draining.


def test_the_provider_in_use_is_exported_as_model_info(plane: Plane) -> None:
    labels = {
        "model": "tagger-lstm", "version": "1", "task": "tagger", "cell": "lstm",
        "provider": "CPUExecutionProvider",
    }  # fmt: skip
    assert REGISTRY.get_sample_value("rnnserve_model_info", labels) == 1
    load_seconds = {"model": "tagger-lstm", "version": "1"}
    assert REGISTRY.get_sample_value("rnnserve_model_load_duration_seconds", load_seconds) > 0


def test_statistics_count_what_was_sent(plane: Plane) -> None:
    def snapshot():
        (stats,) = plane.plane.model_statistics("sine-rnn", "1")
        return stats

    before = snapshot()
    plane.infer("sine-rnn", fp32("x", np.zeros((3, 4, 1))))
    plane.infer("sine-rnn", fp32("x", np.zeros((3, 2, 1))))
    with pytest.raises(InvalidArgument):
        plane.infer("sine-rnn", fp32("x", np.zeros((0, 2, 1))))
    after = snapshot()
    assert after.success.count - before.success.count == 2
    assert after.fail.count - before.fail.count == 1
    assert after.inference_count - before.inference_count == 6
    assert after.execution_count - before.execution_count == 2
    runs_of_three = before.batch_stats.get(3)
    assert after.batch_stats[3].count - (runs_of_three.count if runs_of_three else 0) == 2
    for part in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert getattr(after, part).count - getattr(before, part).count == 2
    assert after.success.ns > before.success.ns and after.last_inference_ms > 0
    (streamed,) = plane.plane.model_statistics("seq2seq-rnn")
    responses = plane.stream("seq2seq-rnn", text("text", ["1/2/03"]))
    (after_stream,) = plane.plane.model_statistics("seq2seq-rnn")
    assert after_stream.success.count - streamed.success.count == 1
    # One encoder run, then one decoder run per streamed token.
    assert after_stream.execution_count - streamed.execution_count == 1 + len(responses)
    everything = plane.plane.model_statistics()
    assert {(stats.name, stats.version) for stats in everything} >= {("sine-rnn", "1")}


def test_requests_wait_for_loading_and_are_refused_while_draining(tiny_repository: Path) -> None:
    async def scenario() -> None:
        settings = Settings(model_repository=tiny_repository)
        data_plane = DataPlane(settings, open_store(settings))
        assert data_plane.live() and not data_plane.ready()
        with pytest.raises(Unavailable, match="loading"):
            await data_plane.infer(InferRequest("sine-rnn", inputs=[X]))
        await data_plane.load()
        assert data_plane.ready()
        await data_plane.close()
        assert not data_plane.ready() and not data_plane.model_ready("sine-rnn")
        with pytest.raises(Unavailable, match="shutting down"):
            await data_plane.infer(InferRequest("sine-rnn", inputs=[X]))

    asyncio.run(scenario())
