"""Malformed requests get a clear status naming the field and what was expected, and
never hurt the server: after the whole table the same server still answers correctly.
Batch 0 and sequence length 0 would abort ONNX Runtime itself for LSTM and GRU. A client
that streams requests without reading the answers is held back by flow control: the
server neither buffers its answers nor stops serving others."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from grpc_helpers import CELLS, infer_request, outputs_of
from polling import eventually
from processes import rss_bytes

from rnnserve.client.client import RnnClient
from rnnserve.protocol import messages as pb

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND


def x_of(*shape: int) -> np.ndarray:
    return np.zeros(shape, np.float32)


def sine(inputs: dict, outputs: list[str] | None = None, **kw) -> pb.ModelInferRequest:
    return infer_request("sine-lstm", inputs, outputs, **kw)


def raw_size_mismatch() -> pb.ModelInferRequest:
    request = sine({"x": x_of(1, 3, 1)})
    request.raw_input_contents[0] = request.raw_input_contents[0][:-4]
    return request


def raw_past_the_shape() -> pb.ModelInferRequest:
    request = sine({"x": x_of(1, 3, 1)})
    request.raw_input_contents[0] += b"\x00" * 4
    return request


def raw_shape(shape: list[int]) -> pb.ModelInferRequest:
    """sine's x with `shape` and no bytes."""
    request = pb.ModelInferRequest(model_name="sine-lstm")
    request.inputs.add(name="x", datatype="FP32", shape=shape)
    request.raw_input_contents.append(b"")
    return request


def bytes_prefix_past_the_data() -> pb.ModelInferRequest:
    request = infer_request("tagger-gru", {"text": ["hello"]})
    request.raw_input_contents[0] = b"\xff\xff\xff\x7fhello"
    return request


def contents_and_raw() -> pb.ModelInferRequest:
    request = sine({"x": x_of(1, 3, 1)})
    request.inputs[0].contents.fp32_contents.extend([0.0, 0.0, 0.0])
    return request


def typed(datatype: str, shape: list[int], **contents) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="sine-lstm")
    request.inputs.add(name="x", datatype=datatype, shape=shape, contents=contents)
    return request


@dataclass
class Case:
    id: str
    request: Callable[[], pb.ModelInferRequest]
    code: grpc.StatusCode
    message: str


ZERO_SIZES = [
    case
    for cell in CELLS
    for case in (
        Case(f"sine-{cell} batch 0",
             lambda c=cell: infer_request(f"sine-{c}", {"x": x_of(0, 3, 1)}),
             INVALID, "input 'x' has batch size 0; expected at least 1"),
        Case(f"sine-{cell} sequence length 0",
             lambda c=cell: infer_request(f"sine-{c}", {"x": x_of(2, 0, 1)}),
             INVALID, "input 'x' has sequence length 0; expected at least 1"),
        Case(f"tagger-{cell} batch 0",
             lambda c=cell: infer_request(f"tagger-{c}", {"text": np.array([], dtype=object)}),
             INVALID, "input 'text' has batch size 0"),
        Case(f"tagger-{cell} tokens sequence length 0",
             lambda c=cell: infer_request(f"tagger-{c}", {"tokens": np.zeros((1, 0), np.int64)}),
             INVALID, "input 'tokens' has sequence length 0"),
        Case(f"tagger-{cell} empty text",
             lambda c=cell: infer_request(f"tagger-{c}", {"text": [""]}),
             INVALID, "text[0] is empty"),
        Case(f"seq2seq-{cell} batch 0",
             lambda c=cell: infer_request(f"seq2seq-{c}", {"text": np.array([], dtype=object)}),
             INVALID, "input 'text' has batch size 0"),
        Case(f"seq2seq-{cell} empty text",
             lambda c=cell: infer_request(f"seq2seq-{c}", {"text": [""]}),
             INVALID, "text[0] is empty"),
    )
]  # fmt: skip

OTHER_CASES = [
    Case("unknown model", lambda: infer_request("nope", {"x": x_of(1, 1, 1)}),
         NOT_FOUND, "unknown model 'nope'"),
    Case("unknown version", lambda: sine({"x": x_of(1, 1, 1)}, version="7"),
         NOT_FOUND, "model 'sine-lstm' has no version '7'"),
    Case("wrong datatype", lambda: sine({"x": np.zeros((1, 3, 1), np.float64)}),
         INVALID, "input 'x' has datatype FP64; expected FP32"),
    Case("wrong rank", lambda: sine({"x": x_of(1, 3)}),
         INVALID, "expected rank 3"),
    Case("wrong feature size", lambda: sine({"x": x_of(1, 3, 2)}),
         INVALID, "input 'x' has feature size (last dimension) 2; expected 1"),
    Case("missing input", lambda: sine({}),
         INVALID, "missing input 'x'"),
    Case("unexpected input", lambda: sine({"x": x_of(1, 1, 1), "z": x_of(1)}),
         INVALID, "unexpected input 'z'"),
    Case("state of the wrong shape", lambda: sine({"x": x_of(2, 3, 1), "h0": x_of(1, 1, 1)}),
         INVALID, "input 'h0' has shape [1, 1, 1]"),
    Case("not a number", lambda: sine({"x": np.full((1, 2, 1), np.nan, np.float32)}),
         INVALID, "NaN"),
    Case("batch over the limit", lambda: sine({"x": x_of(1025, 1, 1)}),
         INVALID, "expected at most 1024"),
    Case("sequence over the limit", lambda: sine({"x": x_of(1, 100_001, 1)}),
         INVALID, "sequence length 100001; expected at most 100000"),
    Case("text not UTF-8", lambda: infer_request("tagger-gru", {"text": [b"\xffhello"]}),
         INVALID, "text[0] is not valid UTF-8"),
    Case("characters outside the vocabulary",
         lambda: infer_request("tagger-lstm", {"text": ["he\u2603llo"]}),
         INVALID, "'\u2603'"),
    Case("raw size mismatch", raw_size_mismatch,
         INVALID, "raw_input_contents holds 8 bytes; shape [1, 3, 1] of FP32 needs 12"),
    Case("contents and raw together", contents_and_raw,
         INVALID, "not both"),
    Case("typed contents of the wrong count",
         lambda: typed("FP32", [1, 3, 1], fp32_contents=[0.0, 1.0]),
         INVALID, "contents.fp32_contents holds 2 elements, shape [1, 3, 1] needs 3"),
    Case("typed contents in the wrong field",
         lambda: typed("FP32", [1, 1, 1], fp64_contents=[0.0]),
         INVALID, "found contents.fp64_contents"),
    Case("unknown datatype", lambda: typed("FP8", [1, 1, 1]),
         INVALID, "unknown datatype 'FP8'"),
    Case("negative dimension", lambda: typed("FP32", [1, -3, 1]),
         INVALID, "negative dimension"),
    Case("raw bytes past the shape", raw_past_the_shape,
         INVALID, "raw_input_contents holds 16 bytes; shape [1, 3, 1] of FP32 needs 12"),
    Case("shape past any array, empty", lambda: raw_shape([2**62, 4, 0]),
         INVALID, "shape [4611686018427387904, 4, 0] has more elements than any tensor"),
    Case("shape whose bytes overflow int64", lambda: raw_shape([2**62, 2**62, 1]),
         INVALID, "more elements than any tensor may hold"),
    Case("shape of 65 dimensions", lambda: raw_shape([1] * 65),
         INVALID, "shape has 65 dimensions; at most 64 are accepted"),
    Case("text with a length prefix past its bytes", bytes_prefix_past_the_data,
         INVALID, "BYTES element 0 claims 2147483647 bytes, only 5 remain"),
    Case("unknown output", lambda: sine({"x": x_of(1, 1, 1)}, ["nope"]),
         INVALID, "unknown output 'nope'"),
    Case("parameter of the wrong type",
         lambda: infer_request("seq2seq-gru", {"text": ["hello"]},
                               parameters={"max_output_length": "ten"}),
         INVALID, "parameter 'max_output_length'"),
    Case("parameter out of range",
         lambda: infer_request("seq2seq-gru", {"text": ["hello"]},
                               parameters={"max_output_length": 0}),
         INVALID, "parameter 'max_output_length' is 0; expected a positive integer"),
]  # fmt: skip

CASES = ZERO_SIZES + OTHER_CASES


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 20


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_request_gets_a_clear_status(server, case: Case) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        server.stub.ModelInfer(case.request(), timeout=60)

    assert caught.value.code() == case.code
    assert case.message in caught.value.details()
    assert "Traceback" not in caught.value.details()


def test_after_the_table_the_server_still_answers(server, reference) -> None:
    x = np.linspace(0, 1, 5, dtype=np.float32).reshape(1, 5, 1)
    for case in CASES:
        with pytest.raises(grpc.RpcError):
            server.stub.ModelInfer(case.request(), timeout=60)

    y = outputs_of(server.stub.ModelInfer(sine({"x": x}, ["y"])))["y"]

    assert server.process.poll() is None
    assert server.stub.ServerReady(pb.ServerReadyRequest()).ready
    np.testing.assert_array_equal(y, reference.sine("sine-lstm", x))


def test_ten_thousand_requests_on_a_stream_never_read_hold_the_server_back_not_up(
    start_server, sine_repository
) -> None:
    server = start_server(sine_repository)
    pid = server.process.pid
    request = sine({"x": x_of(1, 1_000, 1)}, ["y"])  # 4 kB each way: 40 MB in all
    handed = [0]  # requests the client handed to gRPC so far

    def requests() -> Iterator[pb.ModelInferRequest]:
        for _ in range(10_000):
            handed[0] += 1
            yield request

    before = rss_bytes(pid)
    answers = server.stub.ModelStreamInfer(requests())  # never read
    seen: list[int] = []

    def held_back() -> bool:  # the client could hand over none for 25 polls
        seen.append(handed[0])
        return len(seen) > 25 and seen[-1] == seen[-26]

    eventually(held_back, "the stream's requests held back by flow control")
    with RnnClient(server.address) as client:  # meanwhile, others are answered
        y = client.infer("sine-lstm", {"x": x_of(1, 2, 1)}, ["y"])["y"]
    grown = rss_bytes(pid) - before
    answers.cancel()
    print(f"\n{handed[0]:,} of 10,000 requests sent; the server grew {grown / 2**20:.1f} MiB")

    assert handed[0] < 10_000  # the rest held back in the client
    assert y.shape == (1, 2, 1)
    assert grown < 32 * 2**20, f"{grown / 2**20:.0f} MiB more for a stream never read"
    assert server.stub.ServerReady(pb.ServerReadyRequest()).ready
    assert "Traceback" not in server.log()
