"""The clients, sync and asyncio, over gRPC and over REST: numpy in, numpy out, strings for
text models, metadata as dataclasses, sequences over unary calls and (gRPC) streams. Every
check runs with each client (`any_client`: the asyncio ones driven through
tests/client/client_kinds.py's Blocking), streams with the gRPC ones."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from client_kinds import session_of, streaming_needs_grpc

from rnnserve.client.aio import AsyncRnnClient, AsyncSequenceSession
from rnnserve.client.client import build_request
from rnnserve.client.errors import InferenceError, NotFound
from rnnserve.client.metadata import ModelMetadata, ServerMetadata, TensorMetadata
from rnnserve.protocol.sequences import CONTROL_DATATYPES


def test_health_and_server_metadata(any_client) -> None:
    assert any_client.server_live()
    assert any_client.server_ready()
    assert any_client.model_ready("sine-gru")
    assert not any_client.model_ready("sine-gru", "9")
    metadata = any_client.server_metadata()
    assert isinstance(metadata, ServerMetadata) and metadata.name == "rnnserve"
    assert {"sequence", "streaming"} <= set(metadata.extensions)


def test_model_metadata_names_tensors_states_controls_and_text(any_client) -> None:
    sine = any_client.model_metadata("sine-lstm")
    tagger = any_client.model_metadata("tagger-gru", "1")
    seq2seq = any_client.model_metadata("seq2seq-rnn")

    assert isinstance(sine, ModelMetadata)
    assert (sine.name, sine.versions, sine.platform) == ("sine-lstm", ["1"], "onnxruntime_onnx")
    assert sine.inputs == [TensorMetadata("x", "FP32", [-1, -1, 1])]
    assert sine.state_pairs == {"h0": "hn", "c0": "cn"}
    assert sine.control_inputs == list(CONTROL_DATATYPES)
    assert sine.control_outputs == ["sequence_error", "sequence_offset"]
    assert (sine.parameters["task"], sine.parameters["cell"]) == ("sine", "lstm")
    assert [(t.name, t.optional, t.text) for t in tagger.inputs] == [
        ("text", False, True), ("tokens", True, False),
    ]  # fmt: skip
    assert tagger.text_outputs == {"text_out"}
    assert (seq2seq.state_pairs, seq2seq.control_inputs) == ({"h0": "hn"}, [])
    assert seq2seq.text_outputs == {"text_out"}


def test_text_outputs_come_as_str_or_as_bytes_when_asked(server, any_client, connected) -> None:
    raw_client = connected(server, decode_text=False)
    inputs = {"text": ["hello", "hell"]}

    text = any_client.infer("tagger-gru", inputs, ["text_out", "tokens_out"])
    raw = raw_client.infer("tagger-gru", inputs, ["text_out", "tokens_out"])

    assert text["text_out"].tolist() == ["ohlol", "ohlo"]
    assert raw["text_out"].tolist() == [b"ohlol", b"ohlo"]
    np.testing.assert_array_equal(text["tokens_out"], raw["tokens_out"])
    assert text["tokens_out"].dtype == np.int64


def test_tag_turns_hello_into_ohlol(any_client) -> None:
    assert any_client.tag("hello", model="tagger-lstm") == "ohlol"


def test_translate_returns_text(any_client) -> None:
    assert isinstance(any_client.translate("hello", model="seq2seq-rnn"), str)
    assert len(any_client.translate("hello", model="seq2seq-rnn", max_output_length=1)) <= 1


def test_infer_sine_returns_y_and_states_to_continue_with(any_client) -> None:
    values = np.sin(np.linspace(0, 2, 10, dtype=np.float32))
    whole, _ = any_client.infer_sine(values, model="sine-lstm")

    head, states = any_client.infer_sine(values[:6], model="sine-lstm")
    tail, _ = any_client.infer_sine(values[6:], states, model="sine-lstm")

    assert whole.shape == (1, 10, 1)
    assert set(states) == {"h0", "c0"}
    np.testing.assert_allclose(np.concatenate([head, tail], axis=1), whole, atol=1e-6)


def test_generic_infer_takes_and_returns_named_arrays(any_client) -> None:
    out = any_client.infer("tagger-gru", {"text": ["hello", "hell"]}, outputs=["tokens_out"])

    assert list(out) == ["tokens_out"]
    assert out["tokens_out"].shape == (2, 5)


def test_server_errors_raise_with_the_status_and_message(any_client) -> None:
    with pytest.raises(NotFound) as caught:
        any_client.infer("nope", {"x": np.zeros((1, 1, 1), np.float32)})

    assert isinstance(caught.value, InferenceError)
    assert caught.value.code == "NOT_FOUND"
    assert "nope" in caught.value.message


@pytest.mark.parametrize("streaming", [False, True], ids=["ModelInfer", "ModelStreamInfer"])
def test_a_sequence_keeps_state_between_steps(any_client, kind: str, streaming: bool) -> None:
    streaming_needs_grpc(kind, streaming)
    values = np.sin(np.linspace(0, 2, 9, dtype=np.float32))
    whole, _ = any_client.infer_sine(values, model="sine-gru")

    with session_of(any_client, "sine-gru", f"keeps-{kind}-{streaming}", streaming) as sequence:
        steps = [
            sequence.step({"x": values[None, i : i + 3, None]}, ["y"], end=i == 6)["y"]
            for i in (0, 3, 6)
        ]

    np.testing.assert_allclose(np.concatenate(steps, axis=1), whole, atol=1e-6)
    assert sequence.offset == 9 and sequence.retries == 0


@pytest.mark.parametrize("streaming", [False, True], ids=["ModelInfer", "ModelStreamInfer"])
def test_a_session_begins_again_a_sequence_whose_earlier_run_went_on(
    any_client, kind: str, streaming: bool
) -> None:
    """The earlier run of the id is live, past its first step: the server refuses a start
    at 0 there (it would take it for a late attempt at that run's first step), and the
    session sends it again at the server's count, which begins the sequence again."""
    streaming_needs_grpc(kind, streaming)
    values = np.sin(np.linspace(0, 2, 9, dtype=np.float32))
    whole, _ = any_client.infer_sine(values, model="sine-gru")
    sequence_id = f"again-{kind}-{streaming}"
    with session_of(any_client, "sine-gru", sequence_id, streaming) as abandoned:
        for i in (0, 3):
            abandoned.step({"x": -values[None, i : i + 3, None]}, ["y"])

    with session_of(any_client, "sine-gru", sequence_id, streaming) as sequence:
        steps = [
            sequence.step({"x": values[None, i : i + 3, None]}, ["y"], end=i == 6)["y"]
            for i in (0, 3, 6)
        ]

    np.testing.assert_allclose(np.concatenate(steps, axis=1), whole, atol=1e-6)
    assert sequence.offset == 9 and sequence.retries == 0


@pytest.mark.grpc_only
def test_a_stream_yields_every_decoded_seq2seq_token(any_client) -> None:
    request = build_request("seq2seq-gru", {"text": ["hello"]})

    responses = list(any_client.stream(iter([request])))

    finals = [r.parameters["triton_final_response"] for r in responses]
    assert finals[-1] is True and not any(finals[:-1])
    pieces = [r.outputs["text_out"][0] for r in responses]
    assert "".join(pieces) == any_client.translate("hello", model="seq2seq-gru")


def test_step_sessions_steps_many_sessions_and_returns_each_rows_error(any_client) -> None:
    values = np.sin(np.linspace(0, 2, 8, dtype=np.float32))
    whole, _ = any_client.infer_sine(values, model="sine-gru")
    x = np.stack([values, -values])[..., None]  # two sessions, one row each
    ids = [f"{id(any_client)}-1", f"{id(any_client)}-2", f"{id(any_client)}-3"]

    head, errors = any_client.step_sessions("sine-gru", ids[:2], {"x": x[:, :5]}, start=True)
    assert errors == ["", ""]
    tail, errors = any_client.step_sessions(
        "sine-gru", ids[::2], {"x": x[:, 5:]}, end=[True, False], outputs=["y"]
    )

    np.testing.assert_allclose(np.concatenate([head["y"][0], tail["y"][0]]), whole[0], atol=1e-6)
    assert errors[0] == "" and f"sequence '{ids[2]}'" in errors[1] and "not active" in errors[1]
    # sequence_error is returned as the errors; sequence_offset counts each row's time steps
    assert list(tail) == ["y", "sequence_offset"]
    assert tail["sequence_offset"].tolist() == [8, 0]


def test_the_asyncio_client_runs_sequences_concurrently(server) -> None:
    """Natively, in one event loop: eight sequences stepped together, each its own."""
    values = np.sin(np.linspace(0, 3, 12, dtype=np.float32))

    async def one_sequence(client: AsyncRnnClient, n: int) -> np.ndarray:
        async with AsyncSequenceSession(client, "sine-gru", f"concurrent-{n}") as sequence:
            scaled = values * (n + 1) / 8
            steps = [
                await sequence.step({"x": scaled[None, i : i + 4, None]}, ["y"], end=i == 8)
                for i in (0, 4, 8)
            ]
        whole = await client.infer("sine-gru", {"x": scaled[None, :, None]}, ["y"])
        return np.concatenate([step["y"] for step in steps], axis=1) - whole["y"]

    async def main() -> list[np.ndarray]:
        async with AsyncRnnClient(server.address) as client:
            return await asyncio.gather(*(one_sequence(client, n) for n in range(8)))

    for difference in asyncio.run(main()):
        np.testing.assert_allclose(difference, 0, atol=1e-6)


def test_every_client_reads_the_same_metadata(any_client, client) -> None:
    for model in ("sine-lstm", "tagger-gru", "seq2seq-rnn"):
        assert any_client.model_metadata(model) == client.model_metadata(model)
    assert any_client.server_metadata() == client.server_metadata()
