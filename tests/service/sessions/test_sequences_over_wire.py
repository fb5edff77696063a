"""Stateful sequences over the wire, against a real server: a sequence sent piece by piece
gives the answers of the whole sequence sent at once, bit for bit, whichever RPC and client
carry it, while many other sessions run on the same server (whose steps are coalesced with
those of other sessions that arrive together, the default, or within a delay:
--coalesce-max-delay-us, or run alone: --no-coalesce-steps)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from model_statistics import batched_runs
from session_helpers import AioSessions, random_chunks

from rnnserve.client.client import RnnClient, build_request
from rnnserve.client.errors import InferenceError
from rnnserve.client.sequence import SequenceSession

TRITON_CLIENT = Path(__file__).with_name("triton_sequence_client.py")
STEPS = 1000
OTHER_SESSIONS = 100


@pytest.fixture(scope="module")
def alone_server(start_module_server, tiny_repository: Path):
    """A server that runs every step by itself."""
    return start_module_server(tiny_repository, env={"RNNSERVE_COALESCE_STEPS": "false"})


@pytest.fixture(scope="module")
def delaying_server(start_module_server, tiny_repository: Path):
    """A server whose coalesced batches wait up to 2 ms for steps of other sessions."""
    return start_module_server(tiny_repository, env={"RNNSERVE_COALESCE_MAX_DELAY_US": "2000"})


@pytest.mark.parametrize("steps", ["alone", "coalesced", "delayed"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_a_long_sequence_in_random_pieces_equals_the_whole_among_100_other_sessions(
    request: pytest.FixtureRequest, client: RnnClient, tmp_path: Path, cell: str, steps: str
) -> None:
    servers = {"alone": "alone_server", "coalesced": "server", "delayed": "delaying_server"}
    server = request.getfixturevalue(servers[steps])
    model = f"sine-{cell}"
    rng = np.random.default_rng(7)
    x = (np.sin(np.linspace(0, 60, STEPS)) + rng.normal(0, 0.1, STEPS)).astype(np.float32)
    whole = client.infer(model, {"x": x[None, :, None]}, ["y"])["y"].reshape(-1)
    chunks = {rpc: random_chunks(rng, STEPS, 1, 64) for rpc in ("unary", "stream", "triton")}
    np.savez(tmp_path / "in.npz", x=x, chunks=chunks["triton"])
    triton = subprocess.Popen(
        [sys.executable, str(TRITON_CLIENT), server.address, model, "31337",
         str(tmp_path / "in.npz"), str(tmp_path / "out.npy")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip

    async def scenario() -> tuple[np.ndarray, np.ndarray]:
        sessions = AioSessions(server.address)
        others = []
        for index in range(OTHER_SESSIONS):  # short sessions of either RPC, all interleaved
            other_x = rng.normal(0, 1, 12).astype(np.float32)
            send = sessions.unary if index % 2 else sessions.streamed
            others.append(send(model, other_x, random_chunks(rng, 12, 1, 5), f"other-{index}"))
        unary, streamed, *_ = await asyncio.gather(
            sessions.unary(model, x, chunks["unary"], 1001),
            sessions.streamed(model, x, chunks["stream"], "long-streamed"),
            *others,
        )
        await sessions.close()
        return unary, streamed

    unary, streamed = asyncio.run(scenario())
    output, _ = triton.communicate(timeout=120)
    assert triton.returncode == 0, output.decode()
    for got in (unary, streamed, np.load(tmp_path / "out.npy")):
        np.testing.assert_array_equal(got, whole)


def test_streams_of_many_sessions_step_together_and_each_equals_its_whole(
    start_server, tiny_repository: Path
) -> None:
    """On a server of its own: on the shared one, other tests' lone steps may have taught
    the version that its steps come alone, and it would run these alone too for a while
    (dataplane/coalescing.py)."""
    server = start_server(tiny_repository)
    model, steps = "sine-lstm", 30
    rng = np.random.default_rng(11)
    xs = [rng.normal(0, 1, steps).astype(np.float32) for _ in range(16)]
    with RnnClient(server.address) as client:
        wholes = [client.infer(model, {"x": x[None, :, None]}, ["y"])["y"].reshape(-1) for x in xs]
    batched_before = batched_runs(server, model)

    async def scenario() -> list[np.ndarray]:
        sessions = AioSessions(server.address)
        pieces = [1] * steps  # one step a message, on a stream per session, all at once
        streams = (sessions.streamed(model, x, pieces, f"together-{i}") for i, x in enumerate(xs))
        got = await asyncio.gather(*streams)
        await sessions.close()
        return got

    for got, whole in zip(asyncio.run(scenario()), wholes, strict=True):
        np.testing.assert_array_equal(got, whole)
    assert batched_runs(server, model) > batched_before


@pytest.mark.parametrize("streaming", [False, True], ids=["ModelInfer", "ModelStreamInfer"])
def test_the_tagger_fed_one_character_at_a_time_answers_ohlol(
    client: RnnClient, streaming: bool
) -> None:
    with SequenceSession(client, "tagger-gru", f"hello-{streaming}", streaming) as sequence:
        tags = [
            sequence.step({"text": [char]}, ["text_out"], end=index == 4)["text_out"][0]
            for index, char in enumerate("hello")
        ]
    assert "".join(tags) == "ohlol"


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_seq2seq_streams_the_translation_token_by_token_after_the_last_piece(
    client: RnnClient, cell: str
) -> None:
    model = f"seq2seq-{cell}"
    source = "22 nov 2026"
    whole = client.translate(source, model=model)
    with SequenceSession(client, model, f"translate-{cell}", streaming=True) as sequence:
        early = [sequence.step_responses({"text": [piece]}) for piece in ("22 ", "nov ")]
        last = sequence.step_responses({"text": ["2026"]}, end=True)
    # Pieces before the last only feed the encoder: one empty, final answer each.
    for (response,) in early:
        assert response.outputs["text_out"].tolist() == [""]
        assert response.parameters["triton_final_response"] is True
    tokens = [response.outputs["text_out"][0] for response in last]
    assert "".join(tokens) == whole and len(last) >= len(whole)
    finals = [response.parameters["triton_final_response"] for response in last]
    assert finals == [False] * (len(last) - 1) + [True]
    # Through ModelInfer the last piece answers the whole translation at once, and its
    # confidence; a piece before it has no answer yet, and no confidence in one.
    outputs = ["text_out", "confidence"]
    with SequenceSession(client, model, f"translate-unary-{cell}") as sequence:
        assert sequence.step({"text": ["22 nov"]}, outputs)["confidence"].tolist() == [0.0]
        answer = sequence.step({"text": [" 2026"]}, outputs, end=True)
    assert answer["text_out"][0] == whole
    assert answer["confidence"][0] == pytest.approx(
        client.infer(model, {"text": [source]}, outputs)["confidence"][0], rel=1e-5
    )


def sine_step(
    client: RnnClient, sequence_id: int | str, x: np.ndarray, **flags: bool
) -> np.ndarray:
    parameters = {"sequence_id": sequence_id, **flags}
    request = build_request("sine-lstm", {"x": x[None, :, None]}, ["y"], parameters)
    return client.infer_response_of(request).outputs["y"].reshape(-1)


def refusal(client: RnnClient, request) -> InferenceError:
    with pytest.raises(InferenceError) as caught:
        client.infer_response_of(request)
    return caught.value


def test_a_continuation_of_an_unknown_sequence_is_refused(client: RnnClient) -> None:
    request = build_request("sine-lstm", {"x": np.zeros((1, 2, 1), np.float32)},
                            parameters={"sequence_id": 987654})  # fmt: skip
    error = refusal(client, request)
    assert error.code == "INVALID_ARGUMENT"
    assert "sequence 987654 for model sine-lstm version 1 is not active" in error.message
    assert "a sequence must begin with sequence_start=true" in error.message


def test_a_start_on_an_id_in_use_restarts_the_sequence(client: RnnClient) -> None:
    x = np.linspace(-1, 1, 6, dtype=np.float32)
    fresh = sine_step(client, "restart-reference", x, sequence_start=True, sequence_end=True)
    sine_step(client, "restart", x[::-1].copy(), sequence_start=True)
    sine_step(client, "restart", x, sequence_start=False)
    restarted = sine_step(client, "restart", x, sequence_start=True)
    np.testing.assert_allclose(restarted, fresh, rtol=0, atol=1e-6)


def test_the_end_of_a_sequence_frees_its_state(client: RnnClient) -> None:
    x = np.ones(3, np.float32)
    sine_step(client, "ending", x, sequence_start=True)
    sine_step(client, "ending", x, sequence_end=True)
    error = refusal(client, build_request("sine-lstm", {"x": x[None, :, None]},
                                          parameters={"sequence_id": "ending"}))  # fmt: skip
    assert error.code == "INVALID_ARGUMENT"
    assert "sequence 'ending' for model sine-lstm version 1 is not active" in error.message


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"sequence_id": 1.5}, "parameter sequence_id must be an int64/uint64 or a string"),
        ({"sequence_id": True}, "parameter sequence_id must be an int64/uint64 or a string"),
        ({"sequence_id": 3, "sequence_start": 1}, "parameter sequence_start must be a bool"),
        ({"sequence_id": 3, "sequence_end": "yes"}, "parameter sequence_end must be a bool"),
        ({"sequence_id": 3, "sequence_offset": -1}, "parameter sequence_offset must be between 0"),
        ({"sequence_id": 3, "sequence_offset": "1"}, "parameter sequence_offset must be an int64"),
        ({"sequence_offset": 0}, "parameter sequence_offset needs a non-zero sequence_id"),
    ],
    ids=["id double", "id bool", "start int", "end string", "negative offset", "offset string",
         "offset without id"],
)  # fmt: skip
def test_sequence_parameters_of_the_wrong_type_are_refused(
    client: RnnClient, parameters: dict, message: str
) -> None:
    request = build_request("sine-gru", {"x": np.zeros((1, 2, 1), np.float32)},
                            parameters=parameters)  # fmt: skip
    error = refusal(client, request)
    assert error.code == "INVALID_ARGUMENT" and message in error.message


def test_a_refused_offset_names_the_servers_count_in_the_trailing_metadata(
    server, client: RnnClient
) -> None:
    x = np.linspace(0, 1, 4, dtype=np.float32)[None, :, None]
    first = build_request("sine-lstm", {"x": x}, ["y"], {"sequence_id": "trailer",
                          "sequence_start": True, "sequence_offset": 0})  # fmt: skip
    assert client.infer_response_of(first).parameters["sequence_offset"] == 4
    late = build_request("sine-lstm", {"x": x}, ["y"],
                         {"sequence_id": "trailer", "sequence_offset": 2})  # fmt: skip
    with pytest.raises(grpc.RpcError) as raised:
        server.stub.ModelInfer(late)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "the server has applied 4 time steps" in raised.value.details()
    assert ("sequence-offset", "4") in raised.value.trailing_metadata()
    # On a stream the error stays in the stream, its details as the response's parameters.
    replies = list(server.stub.ModelStreamInfer(iter([late, first])))
    assert "the server has applied 4 time steps" in replies[0].error_message
    parameters = replies[0].infer_response.parameters
    assert parameters["sequence_offset"].int64_param == 4
    assert parameters["error_code"].string_param == "FAILED_PRECONDITION"
    assert replies[1].infer_response.parameters["sequence_offset"].int64_param == 4  # a retry
