"""All nine default models answer over gRPC exactly as ONNX Runtime does in-process."""

from __future__ import annotations

import numpy as np
import pytest
from grpc_helpers import CELLS, infer_request, outputs_of

OUTPUTS = ["text_out", "confidence"]


@pytest.mark.parametrize("cell", CELLS)
def test_sine_y_matches_onnx_runtime(server, reference, cell: str) -> None:
    model = f"sine-{cell}"
    x = np.sin(np.linspace(0, 3, 2 * 7, dtype=np.float32)).reshape(2, 7, 1)

    y = outputs_of(server.stub.ModelInfer(infer_request(model, {"x": x}, ["y"])))["y"]

    np.testing.assert_array_equal(y, reference.sine(model, x))


@pytest.mark.parametrize("cell", CELLS)
def test_tagger_text_matches_onnx_runtime(server, reference, cell: str) -> None:
    model = f"tagger-{cell}"

    reply = server.stub.ModelInfer(infer_request(model, {"text": ["hello"]}))
    text_out = outputs_of(reply)["text_out"]

    assert text_out.shape == (1,)
    assert text_out[0].decode() == reference.tag(model, "hello") == "ohlol"


@pytest.mark.parametrize("cell", CELLS)
def test_tagger_token_tensors_are_available(server, reference, cell: str) -> None:
    model = f"tagger-{cell}"
    request = infer_request(model, {"text": ["hello"]}, ["tokens_out", "logits"])

    outputs = outputs_of(server.stub.ModelInfer(request))

    assert set(outputs) == {"tokens_out", "logits"}
    assert outputs["logits"].shape[:2] == (1, 5)
    np.testing.assert_array_equal(outputs["tokens_out"], outputs["logits"].argmax(axis=2))


@pytest.mark.parametrize("cell", CELLS)
def test_seq2seq_text_matches_onnx_runtime(server, reference, cell: str) -> None:
    model = f"seq2seq-{cell}"
    source = "hello"

    outputs = outputs_of(server.stub.ModelInfer(infer_request(model, {"text": [source]})))

    assert outputs["text_out"][0].decode() == reference.translate(model, source)
    assert set(outputs) == {"text_out"}  # the confidence only when asked for


@pytest.mark.parametrize("cell", CELLS)
def test_seq2seq_confidence_is_the_probability_of_each_answer(server, reference, cell) -> None:
    model = f"seq2seq-{cell}"
    sources = ["22 nov 2026", "hello", "3/4/99"]
    text = np.array(sources, dtype=object).reshape(3, 1)

    outputs = outputs_of(server.stub.ModelInfer(infer_request(model, {"text": text}, OUTPUTS)))

    expected = [reference.translate_with_confidence(model, source) for source in sources]
    confidence = outputs["confidence"]
    assert confidence.dtype == np.float32 and confidence.shape == (3, 1)  # as text is
    assert [row.decode() for row in outputs["text_out"][:, 0]] == [t for t, _ in expected]
    np.testing.assert_allclose(confidence[:, 0], [p for _, p in expected], rtol=1e-5)
    assert ((confidence > 0) & (confidence <= 1)).all()


def test_seq2seq_reads_upper_case_as_lower_case(server) -> None:
    request = infer_request("seq2seq-lstm", {"text": ["22 Nov 2026", "22 nov 2026"]}, OUTPUTS)

    outputs = outputs_of(server.stub.ModelInfer(request))

    assert outputs["text_out"][0] == outputs["text_out"][1]
    assert outputs["confidence"][0] == outputs["confidence"][1]


def test_seq2seq_max_output_length_parameter_caps_decoding(server, reference) -> None:
    model = "seq2seq-gru"
    request = infer_request(model, {"text": ["hello"]}, parameters={"max_output_length": 2})

    text_out = outputs_of(server.stub.ModelInfer(request))["text_out"][0].decode()

    assert text_out == reference.translate(model, "hello", max_length=2)
    assert len(text_out) <= 2
