"""REST and gRPC are two doors to one data plane: the same request gives byte-identical
tensors through either (REST's JSON and binary encodings alike), and one sequence may
step through both."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from rnnserve.client.client import RnnClient
from rnnserve.client.rest import RestClient
from rnnserve.protocol import codec

MODELS = [
    f"{task}-{cell}" for task in ("sine", "tagger", "seq2seq") for cell in ("rnn", "lstm", "gru")
]
RNG = np.random.default_rng(15)


@pytest.fixture(scope="module")
def rest_client(server) -> Iterator[RestClient]:
    with RestClient(server.http_url) as client:
        yield client


def request_of(client: RnnClient, model: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """Inputs for the model, and every output it has (its metadata's, control aside)."""
    metadata = client.model_metadata(model)
    outputs = [t.name for t in metadata.outputs if t.name != "sequence_error"]
    if model.startswith("sine"):
        return {"x": RNG.standard_normal((2, 7, 1)).astype(np.float32)}, outputs
    return {"text": np.array([b"hello", b"hol"], dtype=object)}, outputs


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("model", MODELS)
def test_rest_and_grpc_give_byte_identical_tensors(
    server, client: RnnClient, model: str, binary: bool
) -> None:
    inputs, outputs = request_of(client, model)

    over_grpc = client.infer_response(model, inputs, outputs)
    with RestClient(server.http_url, binary=binary) as rest_client:
        over_rest = rest_client.infer_response(model, inputs, outputs)

    assert (over_rest.model_name, over_rest.model_version) == (model, "1")
    assert list(over_rest.outputs) == list(over_grpc.outputs) == outputs
    for name, expected in over_grpc.outputs.items():
        found = over_rest.outputs[name]
        datatype = codec.wire_array(name, expected)[0]
        assert found.shape == expected.shape, name
        assert codec.raw_of(datatype, found) == codec.raw_of(datatype, expected), name


def test_one_sequence_steps_through_both_protocols(
    client: RnnClient, rest_client: RestClient
) -> None:
    x = np.sin(np.linspace(0, 4, 12, dtype=np.float32)).reshape(1, 12, 1)
    whole = client.infer("sine-lstm", {"x": x}, ["y"])["y"]
    doors = [client, rest_client, client, rest_client]
    pieces = []
    for index, (door, (begin, end)) in enumerate(
        zip(doors, [(0, 3), (3, 6), (6, 9), (9, 12)], strict=True)
    ):
        parameters = {"sequence_id": 8101, "sequence_start": index == 0, "sequence_end": end == 12}
        pieces.append(
            door.infer_response("sine-lstm", {"x": x[:, begin:end]}, ["y"], parameters).outputs["y"]
        )

    np.testing.assert_allclose(np.concatenate(pieces, axis=1), whole, rtol=1e-6, atol=1e-6)


def test_the_tagger_hears_hello_one_character_per_protocol_turn(
    client: RnnClient, rest_client: RestClient
) -> None:
    tags = []
    for index, char in enumerate("hello"):
        door = client if index % 2 == 0 else rest_client
        parameters = {
            "sequence_id": "both-doors",
            "sequence_start": index == 0,
            "sequence_end": index == 4,
        }
        answer = door.infer_response("tagger-gru", {"text": [char]}, ["text_out"], parameters)
        tags.append(answer.outputs["text_out"][0])  # str, over either protocol

    assert "".join(tags) == "ohlol"
