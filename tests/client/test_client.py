"""RnnClient: numpy in, numpy out, strings for text models, sequences over both RPCs."""

from __future__ import annotations

import numpy as np
import pytest

from rnnserve.client.client import RnnClient, build_request
from rnnserve.client.errors import InferenceError
from rnnserve.client.sequence import SequenceSession


def test_health_and_metadata_calls(client) -> None:
    assert client.server_live()
    assert client.server_ready()
    assert client.model_ready("sine-gru")
    assert client.server_metadata().name == "rnnserve"
    assert client.model_metadata("tagger-rnn").outputs[0].name == "text_out"


def test_tag_turns_hello_into_ohlol(client) -> None:
    assert client.tag("hello", model="tagger-lstm") == "ohlol"


def test_translate_returns_text(client) -> None:
    assert isinstance(client.translate("hello", model="seq2seq-rnn"), str)
    assert len(client.translate("hello", model="seq2seq-rnn", max_output_length=1)) <= 1


def test_infer_sine_returns_y_and_states_to_continue_with(client) -> None:
    values = np.sin(np.linspace(0, 2, 10, dtype=np.float32))
    whole, _ = client.infer_sine(values, model="sine-lstm")

    head, states = client.infer_sine(values[:6], model="sine-lstm")
    tail, _ = client.infer_sine(values[6:], states, model="sine-lstm")

    assert whole.shape == (1, 10, 1)
    assert set(states) == {"h0", "c0"}
    np.testing.assert_allclose(np.concatenate([head, tail], axis=1), whole, atol=1e-6)


def test_generic_infer_takes_and_returns_named_arrays(client) -> None:
    out = client.infer("tagger-gru", {"text": ["hello", "hell"]}, outputs=["tokens_out"])

    assert list(out) == ["tokens_out"]
    assert out["tokens_out"].shape == (2, 5)


def test_server_errors_raise_with_the_status_and_message(client) -> None:
    with pytest.raises(InferenceError) as caught:
        client.infer("nope", {"x": np.zeros((1, 1, 1), np.float32)})

    assert caught.value.code == "NOT_FOUND"
    assert "nope" in caught.value.message


def test_an_unreachable_server_raises_unavailable() -> None:
    with RnnClient("127.0.0.1:1", timeout_s=5) as unreachable, pytest.raises(InferenceError) as e:
        unreachable.server_ready()

    assert e.value.code == "UNAVAILABLE"


@pytest.mark.parametrize("streaming", [False, True], ids=["ModelInfer", "ModelStreamInfer"])
def test_a_sequence_keeps_state_between_steps(client, streaming: bool) -> None:
    values = np.sin(np.linspace(0, 2, 9, dtype=np.float32))
    whole, _ = client.infer_sine(values, model="sine-gru")

    with SequenceSession(client, "sine-gru", sequence_id=4242, streaming=streaming) as sequence:
        steps = [
            sequence.step({"x": values[None, i : i + 3, None]}, ["y"], end=i == 6)["y"]
            for i in (0, 3, 6)
        ]

    np.testing.assert_allclose(np.concatenate(steps, axis=1), whole, atol=1e-6)


def test_a_stream_yields_every_decoded_seq2seq_token(client) -> None:
    request = build_request("seq2seq-gru", {"text": ["hello"]})

    responses = list(client.stream(iter([request])))

    finals = [r.parameters["triton_final_response"] for r in responses]
    assert finals[-1] is True and not any(finals[:-1])
    pieces = [r.outputs["text_out"][0].decode() for r in responses]
    assert "".join(pieces) == client.translate("hello", model="seq2seq-gru")


def test_step_sessions_steps_many_sessions_and_returns_each_rows_error(client) -> None:
    values = np.sin(np.linspace(0, 2, 8, dtype=np.float32))
    whole, _ = client.infer_sine(values, model="sine-gru")
    x = np.stack([values, -values])[..., None]  # two sessions, one row each

    head, errors = client.step_sessions("sine-gru", [501, 502], {"x": x[:, :5]}, start=True)
    assert errors == ["", ""]
    tail, errors = client.step_sessions(
        "sine-gru", [501, 503], {"x": x[:, 5:]}, end=[True, False], outputs=["y"]
    )

    np.testing.assert_allclose(np.concatenate([head["y"][0], tail["y"][0]]), whole[0], atol=1e-6)
    assert errors[0] == "" and "sequence 503" in errors[1] and "is not active" in errors[1]
    # sequence_error is returned as the errors; sequence_offset counts each row's time steps
    assert list(tail) == ["y", "sequence_offset"]
    assert tail["sequence_offset"].tolist() == [8, 0]
