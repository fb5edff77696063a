"""Multi-session requests over the wire: one request carries one step for each of many
sessions, row i belonging to session sequence_id[i] (control tensors sequence_id,
sequence_start, sequence_end). The rows run in one ORT run from their own states, a row
whose session cannot step fails alone, and every session ends up where it would have been
had it been sent on its own."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from session_helpers import CLUSTER_TURN_SLOW, random_chunks

from rnnserve.client.client import RnnClient, build_request, session_controls
from rnnserve.client.errors import InferenceError
from rnnserve.protocol import messages as pb
from rnnserve.service.grpc import converter

SESSIONS = 64
STEPS = 48


def alone(client: RnnClient, model: str, x: np.ndarray) -> np.ndarray:
    """Each row's y, every row sent alone as one whole-sequence request: x is [rows, seq]."""
    return np.stack(
        [client.infer(model, {"x": row[None, :, None]}, ["y"])["y"][0, :, 0] for row in x]
    )


def stream_step(client: RnnClient, request: pb.ModelInferRequest) -> dict[str, np.ndarray]:
    (response,) = list(client.stream(iter([request])))
    assert response.parameters["triton_final_response"] is True
    return response.outputs


def sine_rows(
    client: RnnClient, ids: list, x: np.ndarray, model: str = "sine-lstm", **flags
) -> tuple[np.ndarray, list[str]]:
    """One step of each session: x is [rows, seq]; returns y [rows, seq] and row errors."""
    out, errors = client.step_sessions(model, ids, {"x": x[..., None]}, outputs=["y"], **flags)
    return out["y"][..., 0], errors


@pytest.mark.parametrize(
    ("model", "rpc"), [("sine-lstm", "ModelInfer"), ("sine-gru", "ModelStreamInfer")]
)
def test_64_sessions_stepped_together_in_random_pieces_equal_each_session_alone(
    client: RnnClient, model: str, rpc: str
) -> None:
    rng = np.random.default_rng(11)
    x = rng.normal(0, 1, (SESSIONS, STEPS)).astype(np.float32)
    ids = [1_000_000 + row for row in range(SESSIONS)]
    chunks = random_chunks(rng, STEPS, 1, 12)
    y = np.zeros_like(x)
    position = 0
    for index, length in enumerate(chunks):
        order = rng.permutation(SESSIONS)  # rows come in any order: ids pick the states
        piece = x[order, position : position + length]
        controls = session_controls(
            [ids[row] for row in order], start=index == 0, end=index == len(chunks) - 1
        )
        request = build_request(model, {"x": piece[..., None], **controls}, ["y"])
        if rpc == "ModelInfer":
            out = client.infer_response_of(request).outputs
        else:
            out = stream_step(client, request)
        assert out["sequence_error"].tolist() == [b""] * SESSIONS
        y[order, position : position + length] = out["y"][..., 0]
        position += length
    np.testing.assert_allclose(y, alone(client, model, x), rtol=0, atol=1e-5)


def test_a_request_of_64_rows_is_one_onnx_runtime_run(server, client: RnnClient) -> None:
    def executions() -> tuple[int, int]:
        request = pb.ModelStatisticsRequest(name="sine-rnn", version="1")
        (stats,) = server.stub.ModelStatistics(request).model_stats
        batches = {batch.batch_size: batch.compute_infer.count for batch in stats.batch_stats}
        return stats.execution_count, batches.get(SESSIONS, 0)

    x = np.ones((SESSIONS, 5), np.float32)
    ids = [f"one-run-{row}" for row in range(SESSIONS)]
    before = executions()
    sine_rows(client, ids, x, model="sine-rnn", start=True)
    sine_rows(client, ids, x, model="sine-rnn", end=True)
    runs, runs_of_64 = executions()
    assert (runs - before[0], runs_of_64 - before[1]) == (2, 2)


def test_a_row_of_an_unknown_session_fails_alone_and_the_others_advance(
    client: RnnClient,
) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (4, 9)).astype(np.float32)
    ids = ["keep-0", "keep-1", "keep-2", "keep-3"]
    y_head, errors = sine_rows(client, ids, x[:, :3], start=True)
    assert errors == [""] * 4
    # Row 2 names a session that never started: it fails, the other three step.
    mixed = [ids[0], ids[1], "never-started", ids[3]]
    controls = session_controls(mixed, start=False, end=False)
    request = build_request("sine-lstm", {"x": x[:, 3:6, None], **controls}, ["y"])
    response = client.infer_response_of(request)
    out = response.outputs
    assert response.parameters["failed_rows"] == 1
    messages = [message.decode() for message in out["sequence_error"]]
    assert messages[:2] == ["", ""] and messages[3] == ""
    assert "sequence 'never-started' for model sine-lstm version 1 is not active" in messages[2]
    assert not out["y"][2].any()  # a failed row's outputs are zeros
    # Session keep-2 missed that piece: it catches up alone, then all four go on together.
    caught_up, errors = sine_rows(client, ["keep-2"], x[2:3, 3:6])
    assert errors == [""]
    y_tail, errors = sine_rows(client, ids, x[:, 6:], end=True)
    assert errors == [""] * 4
    y_middle = out["y"][..., 0].copy()
    y_middle[2] = caught_up[0]
    got = np.concatenate([y_head, y_middle, y_tail], axis=1)
    np.testing.assert_allclose(got, alone(client, "sine-lstm", x), rtol=0, atol=1e-5)


def test_each_row_starts_and_ends_its_own_session(client: RnnClient) -> None:
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    ids = [71, 72]
    sine_rows(client, ids, x, start=True)
    # Row 0 restarts its session, row 1 continues its own and ends it.
    y, errors = sine_rows(client, ids, x, start=[True, False], end=[False, True])
    assert errors == ["", ""]
    fresh = alone(client, "sine-lstm", x)
    twice = alone(client, "sine-lstm", np.concatenate([x, x], axis=1))
    np.testing.assert_allclose(y[0], fresh[0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(y[1], twice[1, 4:], rtol=0, atol=1e-5)
    # Session 72 was freed by its end; 71 still holds its state.
    y, errors = sine_rows(client, ids, x)
    assert (
        errors[0] == "" and "sequence 72 for model sine-lstm version 1 is not active" in errors[1]
    )
    np.testing.assert_allclose(y[0], twice[0, 4:], rtol=0, atol=1e-5)
    assert not y[1].any()


def rows_response(
    client: RnnClient,
    ids: list[str],
    x: np.ndarray,
    offsets: list[int] | None = None,
    start: bool | list[bool] = False,
) -> dict[str, np.ndarray]:
    """Every output of one step of each session (x is [rows, seq]), the control outputs
    among them."""
    controls = session_controls(ids, start, False, offsets)
    request = build_request("sine-lstm", {"x": x[..., None], **controls}, ["y"])
    return client.infer_response_of(request).outputs


def test_continuations_answer_the_outputs_that_steps_with_offsets_get(
    client: RnnClient,
) -> None:
    # Twin sessions get the same steps: one twin's rows continue without offsets (all
    # live: the manager's continue_rows), the other's carry their offsets (step_rows).
    x = np.random.default_rng(8).normal(0, 1, (5, 7)).astype(np.float32)
    plain = [f"plain-{row}" for row in range(5)]
    counted = [f"counted-{row}" for row in range(5)]
    for ids in (plain, counted):
        sine_rows(client, ids, x[:, :3], start=True)
    bare = rows_response(client, plain, x[:, 3:])
    with_offsets = rows_response(client, counted, x[:, 3:], offsets=[3] * 5)
    assert bare.keys() == with_offsets.keys()
    for name, array in bare.items():
        assert array.dtype == with_offsets[name].dtype, name
        np.testing.assert_array_equal(array, with_offsets[name], err_msg=name)
    assert bare["sequence_offset"].tolist() == [7] * 5
    assert bare["sequence_error"].tolist() == [b""] * 5


def test_continuing_rows_beside_a_start_each_step_their_own_session(client: RnnClient) -> None:
    x = np.random.default_rng(9).normal(0, 1, (3, 6)).astype(np.float32)
    ids = ["beside-0", "beside-1", "beside-new"]
    sine_rows(client, ids[:2], x[:2, :4], start=True)
    out = rows_response(client, ids, np.concatenate([x[:2, 4:], x[2:, :2]]),
                        start=[False, False, True])  # fmt: skip
    assert out["sequence_error"].tolist() == [b""] * 3
    assert out["sequence_offset"].tolist() == [6, 6, 2]
    expected = alone(client, "sine-lstm", x)
    np.testing.assert_allclose(out["y"][:2, :, 0], expected[:2, 4:], rtol=0, atol=1e-5)
    np.testing.assert_allclose(out["y"][2, :, 0], expected[2, :2], rtol=0, atol=1e-5)


def test_continuing_rows_of_an_ended_and_an_expired_session_fail_alone_as_steps_alone_do(
    start_server, tiny_repository
) -> None:
    idle_s = 1.0
    server = start_server(tiny_repository, env={"RNNSERVE_SESSION_IDLE_TIMEOUT_S": str(idle_s)})
    x = np.random.default_rng(10).normal(0, 1, (4, 6)).astype(np.float32)
    with RnnClient(server.address) as client:
        sine_rows(client, ["stale"], x[:1, :3], start=True)
        time.sleep(idle_s * 3)  # "stale" expires; the others start after it
        ids = ["live-0", "stale", "live-1", "finished"]
        sine_rows(client, ["live-0", "live-1", "finished"], x[[0, 2, 3], :3], start=True)
        sine_rows(client, ["finished"], x[3:, :3], end=True)
        out = rows_response(client, ids, x[:, 3:])
        messages = [message.decode() for message in out["sequence_error"]]
        assert messages[0] == messages[2] == ""
        assert out["sequence_offset"].tolist() == [6, 0, 6, 6]  # an ended one: its count
        assert "'stale' for model sine-lstm version 1 is not active: it expired" in messages[1]
        assert "'finished' for model sine-lstm version 1 is not active: it ended" in messages[3]
        assert not out["y"][[1, 3]].any()
        # Each failed row says what a step of its session alone hears.
        for row in (1, 3):
            request = build_request("sine-lstm", {"x": x[row : row + 1, 3:, None]},
                                    parameters={"sequence_id": ids[row]})  # fmt: skip
            with pytest.raises(InferenceError) as caught:
                client.infer_response_of(request)
            assert caught.value.message == messages[row]
        # The live rows advanced, from the states their sessions held.
        expected = alone(client, "sine-lstm", x)
        np.testing.assert_allclose(out["y"][[0, 2], :, 0], expected[[0, 2], 3:], atol=1e-5)


def test_tagger_rows_of_different_lengths_each_tag_their_own_session(
    client: RnnClient,
) -> None:
    ids = ["typist-a", "typist-b", "typist-c"]
    first, errors = client.step_sessions(
        "tagger-gru", ids, {"text": ["he", "hel", "h"]}, start=True, outputs=["text_out"]
    )
    assert errors == ["", "", ""]
    second, errors = client.step_sessions(
        "tagger-gru", ids, {"text": ["llo", "lo", "ello"]}, end=True, outputs=["text_out"]
    )
    assert errors == ["", "", ""]
    tags = [a + b for a, b in zip(first["text_out"], second["text_out"], strict=True)]
    assert tags == ["ohlol"] * 3


def test_rows_continue_sessions_started_with_sequence_parameters(client: RnnClient) -> None:
    x = np.arange(6, dtype=np.float32).reshape(1, 6) / 6
    request = build_request(
        "sine-lstm", {"x": x[:, :3, None]}, ["y"],
        {"sequence_id": "by-parameters", "sequence_start": True},
    )  # fmt: skip
    head = client.infer_response_of(request).outputs["y"][0, :, 0]
    tail, errors = sine_rows(client, ["by-parameters"], x[:, 3:], end=True)
    assert errors == [""]
    got = np.concatenate([head, tail[0]])
    np.testing.assert_allclose(got, alone(client, "sine-lstm", x)[0], rtol=0, atol=1e-5)


def test_requests_naming_the_same_sessions_in_opposite_orders_all_complete(
    client: RnnClient,
) -> None:
    ids = [f"crossing-{row}" for row in range(8)]
    x = np.ones((8, 2), np.float32)
    sine_rows(client, ids, x, start=True)
    failures: list[BaseException] = []

    def send(order: list[str]) -> None:
        try:
            for _ in range(15):
                _, errors = sine_rows(client, order, x)
                assert errors == [""] * 8
        except BaseException as error:  # reported by the main thread
            failures.append(error)

    threads = [threading.Thread(target=send, args=(o,)) for o in (ids, ids[::-1])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures and not any(thread.is_alive() for thread in threads)


def test_metadata_names_the_control_inputs_and_the_row_errors(client: RnnClient) -> None:
    for model in ("sine-lstm", "tagger-gru"):
        parameters = client.model_metadata(model).parameters
        assert parameters["control_inputs"] == (
            "sequence_id,sequence_start,sequence_end,sequence_offset"
        )
        assert parameters["control_outputs"] == "sequence_error,sequence_offset"
    assert "control_inputs" not in client.model_metadata("seq2seq-gru").parameters


def refusal(client: RnnClient, inputs: dict, parameters: dict | None = None) -> InferenceError:
    request = build_request("sine-lstm", inputs, ["y"], parameters)
    with pytest.raises(InferenceError) as caught:
        client.infer_response_of(request)
    return caught.value


X3 = np.zeros((3, 2, 1), np.float32)


def uint64(*ids: int) -> dict[str, np.ndarray]:
    return {"sequence_id": np.array(ids, np.uint64)}


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (uint64(4, 5, 4), "input 'sequence_id' names sessions 4 more than once"),
        (uint64(4, 0, 5), "sequence_id[1] is 0, which names no session"),
        ({"sequence_id": np.array(["a", "", "b"], object)},
         "sequence_id[1] is '', which names no session"),
        ({"sequence_id": np.array([-4, 5, 6], np.int64)},
         "sequence_id[0] is -4; expected an id from 1"),
        ({"sequence_id": np.array([1.0, 2.0, 3.0], np.float32)},
         "input 'sequence_id' has datatype FP32; expected UINT64 or INT64 or BYTES"),
        ({"sequence_id": np.array([[1, 2, 3]], np.uint64)},
         "input 'sequence_id' has shape [1, 3]; expected [batch] or [batch, 1]"),
        (uint64(1, 2), "input 'sequence_id' has 2 rows; expected 3, one per row of the batch"),
        ({**uint64(1, 2, 3), "sequence_start": np.array([1, 0, 1], np.int32)},
         "input 'sequence_start' has datatype INT32; expected BOOL"),
        ({**uint64(1, 2, 3), "sequence_end": np.array([True, False])},
         "input 'sequence_end' has 2 rows; expected 3, one per row of 'sequence_id'"),
        ({"sequence_end": np.array([True, False, True])},
         "inputs ['sequence_end'] need input 'sequence_id'"),
        ({**uint64(1, 2, 3), "h0": np.zeros((1, 3, 8), np.float32)},
         "input 'h0' is accepted only when every row has sequence_start=true"),
        ({**uint64(1, 2, 3), "sequence_offset": np.array([0, -2, 5], np.int64)},
         "sequence_offset[1] must be between 0 and 9223372036854775807, got -2"),
        ({**uint64(1, 2, 3), "sequence_offset": np.array([0, 2, 5], np.int32)},
         "input 'sequence_offset' has datatype INT32; expected INT64"),
        ({**uint64(1, 2, 3), "sequence_offset": np.array([0, 2], np.int64)},
         "input 'sequence_offset' has 2 rows; expected 3, one per row of 'sequence_id'"),
        ({"sequence_offset": np.array([0, 0, 0], np.int64)},
         "inputs ['sequence_offset'] need input 'sequence_id'"),
    ],
    ids=[
        "duplicate ids", "id zero", "empty string id", "negative id", "FP32 ids", "ids [1, 3]",
        "too few ids", "INT32 start", "short end", "no ids", "h0 on continuations",
        "negative offset", "INT32 offset", "short offset", "offset alone",
    ],
)  # fmt: skip
def test_malformed_control_tensors_refuse_the_whole_request(
    client: RnnClient, inputs: dict, message: str
) -> None:
    error = refusal(client, {"x": X3, **inputs})
    assert error.code == "INVALID_ARGUMENT"
    assert message in error.message


def test_sequence_parameters_and_control_tensors_together_are_refused(client: RnnClient) -> None:
    controls = session_controls([1, 2, 3], start=True, end=False)
    error = refusal(client, {"x": X3, **controls}, {"sequence_id": 9, "sequence_start": True})
    assert error.code == "INVALID_ARGUMENT"
    assert "both sequence parameters and control tensors; expected one" in error.message


def test_seq2seq_refuses_multi_session_requests(client: RnnClient) -> None:
    request = build_request(
        "seq2seq-gru", {"text": ["22 nov", "1 may"], **session_controls(["s1", "s2"], True, True)}
    )
    with pytest.raises(InferenceError) as caught:
        client.infer_response_of(request)
    assert caught.value.code == "FAILED_PRECONDITION"
    assert "model 'seq2seq-gru' (seq2seq) takes no multi-session requests" in caught.value.message


def test_rows_over_the_session_limit_fail_alone(start_server, tiny_repository) -> None:
    server = start_server(tiny_repository, env={"RNNSERVE_MAX_SESSIONS": "3"})
    with RnnClient(server.address) as client:
        x = np.ones((5, 2), np.float32)
        y, errors = sine_rows(client, [1, 2, 3, 4, 5], x, start=True)
        assert errors[:3] == ["", "", ""]
        assert all("session limit reached: 3 active sessions" in e for e in errors[3:])
        assert y[:3].any(axis=1).all() and not y[3:].any()
        # The three admitted sessions hold state and go on.
        _, errors = sine_rows(client, [1, 2, 3], x[:3], end=True)
        assert errors == ["", "", ""]


def test_the_converter_keeps_control_tensors_as_sent() -> None:
    controls = session_controls(["a", "b"], start=[True, False], end=False)
    request = converter.request_from_proto(build_request("sine-lstm", controls))
    tensors = {tensor.name: tensor for tensor in request.inputs}
    assert tensors["sequence_id"].datatype == "BYTES"
    assert tensors["sequence_start"].data.tolist() == [True, False]
    assert session_controls([7, 8], True, True)["sequence_id"].dtype == np.uint64


@CLUSTER_TURN_SLOW
def test_rows_keep_their_states_in_redis_and_hand_over_between_servers(
    start_server, tiny_repository, any_redis: str
) -> None:
    env = {"RNNSERVE_STATE_STORE": "redis", "RNNSERVE_REDIS_URL": any_redis}
    servers = [start_server(tiny_repository, env=env) for _ in range(2)]
    clients = [RnnClient(server.address) for server in servers]
    x = np.random.default_rng(5).normal(0, 1, (6, 9)).astype(np.float32)
    ids = [f"redis-row-{row}" for row in range(6)]
    # Pieces alternate between the servers; the last one also names a session never started.
    pieces = [sine_rows(clients[0], ids, x[:, :4], start=True)]
    pieces.append(sine_rows(clients[1], ids, x[:, 4:7]))
    y_last, errors = sine_rows(
        clients[0], [*ids, "redis-unknown"], np.pad(x[:, 7:], ((0, 1), (0, 0))), end=True
    )
    for client in clients:
        client.close()
    assert [errors for _, errors in pieces] == [[""] * 6] * 2
    assert errors[:6] == [""] * 6 and "'redis-unknown'" in errors[6]
    got = np.concatenate([pieces[0][0], pieces[1][0], y_last[:6]], axis=1)
    with RnnClient(servers[0].address) as client:
        np.testing.assert_allclose(got, alone(client, "sine-lstm", x), rtol=0, atol=1e-5)
