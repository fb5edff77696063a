"""REST bodies as the server reads them (rnnserve.protocol.rest): whatever a client sends,
a body that does not decode is a CodecError naming the problem (the server's 400), never
another exception."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import numpy as np
import pytest

from rnnserve.protocol import rest
from rnnserve.protocol.codec import MAX_ELEMENTS, MAX_RANK, CodecError


def header_of(body: bytes, header_length: str | None = None) -> dict[str, Any]:
    return rest.split_body(body, header_length)[0]


def nested(levels: int) -> bytes:
    return b'{"a":' + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b'{"id": "\xff"}', "not UTF-8 text"),
        (b'{"id": "\xed\xa0\x80"}', "not UTF-8 text"),  # a surrogate, encoded
        ('{"inputs": []}'.encode("utf-16-le"), "not JSON"),
        (b'{"id": "\\ud800"}', "lone surrogate"),
        (b'{"inputs": [{"name": "\\udc00"}]}', "lone surrogate"),
        (b'{"parameters": {"k": "a\\ud83d"}}', "lone surrogate"),
        (b"[" * 100_000 + b"]" * 100_000, f"nests deeper than {rest.MAX_DEPTH} levels"),
        (nested(rest.MAX_DEPTH + 1), f"nests deeper than {rest.MAX_DEPTH} levels"),
        (b"[1, 2]", "must be a JSON object, got list"),
    ],
    ids=[
        "invalid-utf8", "encoded-surrogate", "utf16", "lone-high-surrogate",
        "lone-low-surrogate-in-a-name", "unpaired-in-a-parameter", "nested-100000-deep",
        "one-level-too-deep", "not-an-object",
    ],
)  # fmt: skip
def test_a_body_that_is_not_valid_json_text_is_refused_naming_why(body: bytes, words: str) -> None:
    with pytest.raises(CodecError, match=words):
        header_of(body)


def test_escapes_of_valid_text_are_read() -> None:
    body = b'{"a": "\\ud83d\\ude00", "b": "\\\\ud800", "c": "\xc3\xa9"}'

    assert header_of(body) == {"a": "\U0001f600", "b": "\\ud800", "c": "\u00e9"}


def test_nesting_counts_brackets_outside_strings_only() -> None:
    many = "[" * 1000
    escaped_quote = b'{"a": "\\"' + b"[" * 100 + b'", "b": 1}'  # still inside the string
    after_backslash = b'{"a": "\\\\", "b": ' + b"[" * 100 + b"]" * 100 + b"}"  # outside

    assert header_of(nested(rest.MAX_DEPTH)) == json.loads(nested(rest.MAX_DEPTH))
    assert header_of(json.dumps({"text": many, "more": [many] * 3}).encode())["text"] == many
    assert header_of(escaped_quote)["b"] == 1
    with pytest.raises(CodecError, match="nests deeper"):
        header_of(after_backslash)


def deepest(text: bytes) -> int:
    """How deep `text` nests, read a byte at a time: a quote after an odd run of
    backslashes is no string's end (nor start), brackets in strings are text."""
    depth = most = backslashes = 0
    inside = False
    for byte in text:
        if byte == ord('"') and backslashes % 2 == 0:
            inside = not inside
        elif not inside and byte in b"[{":
            depth += 1
            most = max(most, depth)
        elif not inside and byte in b"]}":
            depth -= 1
        backslashes = backslashes + 1 if byte == ord("\\") else 0
    return most


def test_nesting_is_counted_as_read_a_byte_at_a_time_whatever_the_blocks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(0)
    monkeypatch.setattr(rest, "MAX_DEPTH", 3)
    for _ in range(2_000):
        text = bytes(rng.choice(b'[]{}"\\ax') for _ in range(rng.randint(1, 60)))
        monkeypatch.setattr(rest, "_DEPTH_BLOCK", rng.randint(1, 9))
        codes = np.frombuffer(text, np.uint8)
        if deepest(text) > 3:
            with pytest.raises(CodecError, match="nests deeper than 3 levels"):
                rest._check_depth(codes)
        else:
            rest._check_depth(codes)


@pytest.mark.parametrize("backslashes", [1, 2, 3, 4])
def test_nesting_is_read_right_across_the_blocks_it_is_counted_in(backslashes: int) -> None:
    # A run of backslashes that ends one block and a quote that starts the next: an odd
    # run escapes it (the string goes on, its brackets are text), an even one does not.
    lead = b'{"a": "'
    pad = b"x" * (rest._DEPTH_BLOCK - len(lead) - backslashes)
    tail = b'"' + b"[" * 100 + b'"}'
    body = lead + pad + b"\\" * backslashes + tail
    assert body.index(b'"', len(lead) + len(pad)) == rest._DEPTH_BLOCK

    if backslashes % 2:  # the quote is text: the brackets are too, and a quote ends it
        assert header_of(body)["a"].endswith("[" * 100)
    else:  # the string ended: 100 brackets open (and the body is no JSON at all)
        with pytest.raises(CodecError, match="nests deeper"):
            header_of(body)


def test_the_inference_header_content_length_must_be_a_byte_count_within_the_body() -> None:
    body = b'{"inputs": []}' + b"\x00" * 4
    for lie in ["-1", "1_4", " 14", "14.0", "0x0e", ""]:
        with pytest.raises(CodecError, match="must be a byte count"):
            header_of(body, lie)
    with pytest.raises(CodecError, match="says 19 bytes of JSON; the body has 18"):
        header_of(body, "19")
    with pytest.raises(CodecError, match="not JSON"):
        header_of(body, "10")

    header, binary = rest.split_body(body, "14")
    assert header == {"inputs": []} and bytes(binary) == b"\x00" * 4


def test_binary_data_is_read_in_place_and_must_be_accounted_for() -> None:
    json_part = (
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], '
        b'"parameters": {"binary_data_size": 8}}]}'
    )
    body = json_part + np.array([1.5, 2.5], "<f4").tobytes()
    header, binary_part = rest.split_body(body, str(len(json_part)))
    binary = rest.BinaryData(binary_part)

    name, datatype, data, _ = rest.tensor_from_json(header["inputs"][0], binary)

    binary.check_consumed()
    assert binary_part.obj is body  # a view of the body, not a copy of its tail
    assert (name, datatype, data.tolist()) == ("x", "FP32", [1.5, 2.5])
    for size, words in [(9, "only 8 bytes of binary data remain"), (8.0, "a byte count")]:
        with pytest.raises(CodecError, match=words):
            rest.BinaryData(binary_part).take("input 'x'", size)
    with pytest.raises(CodecError, match="4 bytes of binary data follow the JSON"):
        short = rest.BinaryData(binary_part)
        short.take("input 'x'", 4)
        short.check_consumed()


@pytest.mark.parametrize(
    ("datatype", "value"),
    [("FP32", 1e39), ("FP32", -(10**39)), ("INT8", 128), ("UINT8", -1),
     ("INT64", 2**63), ("UINT64", 2**64), ("FP64", 10**400)],
)  # fmt: skip
def test_a_number_out_of_the_datatypes_range_is_refused(datatype: str, value: float) -> None:
    with pytest.raises(CodecError, match=f"input 'x': a value does not fit {datatype}"):
        rest.array_from_json("x", datatype, [2], [0, value])


def test_a_large_fp32_tensor_is_checked_as_a_small_one_is() -> None:
    """Past a few dozen values the range is checked in numpy rather than in a loop."""
    with pytest.raises(CodecError, match="input 'x': a value does not fit FP32"):
        rest.array_from_json("x", "FP32", [100], [0.0] * 99 + [-1e39])

    read = rest.array_from_json("x", "FP32", [100], [1.0] * 97 + [math.inf, -math.inf, math.nan])
    assert read[:97].tolist() == [1.0] * 97 and np.isinf(read[97:99]).all() and np.isnan(read[99])


def test_numbers_at_the_edge_of_the_range_and_non_finite_ones_are_read() -> None:
    edge = float(np.finfo(np.float32).max)
    data = rest.array_from_json("x", "FP32", [3], [edge, float("inf"), float("nan")])

    assert data[0] == np.float32(edge) and np.isinf(data[1]) and np.isnan(data[2])
    assert rest.array_from_json("t", "INT8", [2], [-128, 127]).tolist() == [-128, 127]


@pytest.mark.parametrize(
    ("shape", "words"),
    [([2**40, 2**40, 0], "more elements than any tensor may hold"),
     ([10**30, 0], "more elements than any tensor may hold"),
     ([1] * (MAX_RANK + 1), f"at most {MAX_RANK} are accepted")],
    ids=["product-past-numpy", "dimension-past-int64", "rank-past-numpy"],
)  # fmt: skip
def test_a_shape_no_array_can_have_is_refused_even_when_empty(shape: list[int], words: str) -> None:
    with pytest.raises(CodecError, match=words):
        rest.array_from_json("x", "FP32", shape, [])
    with pytest.raises(CodecError, match=words):
        rest.tensor_from_json(
            {"name": "x", "datatype": "FP32", "shape": shape, "data": []}, rest.BinaryData(b"")
        )
    assert MAX_ELEMENTS * 8 < 2**63
