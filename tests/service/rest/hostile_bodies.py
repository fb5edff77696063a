"""A generated corpus of hostile REST infer bodies, as an attacker (or a broken client)
would send them: valid requests of each kind of default model, then mutated, each body
with the headers it goes with. The same seed gives the same corpus.

Mutations: a hostile JSON value put anywhere in the request (numbers out of every range,
lone surrogates, strings, containers empty, huge or nested deep, NaN, wrong types), bytes
flipped, inserted or cut off, a tensor given twice or losing a field, lying binary headers
(Inference-Header-Content-Length, binary_data_size) and compressed bodies that are not.
"""

from __future__ import annotations

import gzip
import json
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rnnserve.protocol import codec, rest

PLACE = "\x00hostile\x00"  # where a hostile value goes, replaced once the JSON is written
HOSTILE_VALUES = [
    b"null", b"true", b"false", b"-1", b"0", b"1.5", b"18446744073709551616",
    b"-9223372036854775809", b"1e400", b"-1e39", b"1e39", b"NaN", b"Infinity", b"1" * 5000,
    b'""', b'"\\ud800"', b'"\\udc00x"', b'"\\ud83d"', b'"' + b"x" * 10_000 + b'"',
    b'"FP16"', b'"BYTES"', b'"sine-lstm"', b'"x"', b'"\\u0000"', b"[]", b"{}", b"[[]]",
    b"[" * 100 + b"]" * 100, b"[" * 70_000 + b"]" * 70_000, b"[1e39]", b"[-1]",
    b"[" + b",".join([b"0"] * 10_000) + b"]", b"[2147483648, -2147483649]",
    b'{"binary_data_size": 99999999999}', b'{"binary_data_size": -1}',
    b'{"binary_data": "yes"}', b'{"sequence_id": 1, "sequence_start": true}',
    b'[{"name": "x"}]', b'[{"name": "x", "datatype": "FP32", "shape": [1, -1, 1]}]',
    b"[9223372036854775807, 9223372036854775807, 0]", b"[" + b"1," * 100 + b"1]",
]  # fmt: skip
INSERTED = [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b'"', b"\\", b"[", b"]", b"{", b"}",
            b",", b":", b"\\u", b"\\ud800", b"1e999", b"\r\n"]  # fmt: skip


@dataclass
class Body:
    model: str
    content: bytes
    headers: dict[str, str] = field(default_factory=dict)
    how: str = ""  # the mutation, for a failure's message


def _sine(rng: random.Random) -> dict[str, Any]:
    x = np.round(np.sin(np.linspace(0, 3, 6)), 3).reshape(1, 6, 1)
    data = x.tolist() if rng.random() < 0.5 else x.ravel().tolist()
    body: dict[str, Any] = {
        "id": "seed",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 6, 1], "data": data}],
        "outputs": [{"name": "y"}],
    }
    if rng.random() < 0.3:
        body["parameters"] = {"sequence_id": rng.randint(1, 9), "sequence_start": True}
    return body


def _tagger(rng: random.Random) -> dict[str, Any]:
    if rng.random() < 0.5:
        tensor = {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hello"]}
    else:
        tensor = {"name": "tokens", "datatype": "INT64", "shape": [1, 3], "data": [1, 2, 3]}
    return {
        "inputs": [tensor],
        "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
    }


def _seq2seq(rng: random.Random) -> dict[str, Any]:
    return {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hello"]}],
        "parameters": {"max_output_length": rng.randint(1, 8)},
    }


SEEDS = {"sine-lstm": _sine, "tagger-gru": _tagger, "seq2seq-gru": _seq2seq}


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON value: the keys and indices that lead to it."""
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*path, index))
    return found


def _with_hostile_value(header: dict[str, Any], rng: random.Random) -> tuple[bytes, str]:
    path = rng.choice(_paths(header)[1:])
    *parents, last = path
    container: Any = header
    for key in parents:
        container = container[key]
    container[last] = PLACE
    value = rng.choice(HOSTILE_VALUES)
    text = json.dumps(header).encode().replace(json.dumps(PLACE).encode(), value)
    return text, f"{'/'.join(map(str, path))} = {value[:40]!r}"


def _binary(header: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """The request with its first tensor's data moved to the binary part."""
    tensor = header["inputs"][0]
    datatype, array = tensor["datatype"], np.asarray(tensor.pop("data"), dtype=object)
    if datatype != "BYTES":
        array = array.astype({"FP32": np.float32, "INT64": np.int64}[datatype])
    raw = codec.raw_of(datatype, array)
    tensor["parameters"] = {rest.BINARY_DATA_SIZE: len(raw)}
    return header, raw


def _mutated(body: Body, rng: random.Random) -> Body:
    content = bytearray(body.content)
    kind = rng.randrange(3)
    if kind == 0 and content:  # bytes flipped
        for _ in range(rng.randint(1, 4)):
            content[rng.randrange(len(content))] = rng.randrange(256)
        how = "bytes flipped"
    elif kind == 1:  # bytes inserted
        at = rng.randint(0, len(content))
        content[at:at] = rng.choice(INSERTED) * rng.randint(1, 3)
        how = "bytes inserted"
    else:  # cut off
        content = content[: rng.randint(0, len(content))]
        how = "cut off"
    return Body(body.model, bytes(content), body.headers, how)


def corpus(count: int, seed: int = 0) -> list[Body]:
    """`count` hostile bodies."""
    rng = random.Random(seed)
    bodies: list[Body] = []
    while len(bodies) < count:
        model = rng.choice(list(SEEDS))
        header = SEEDS[model](rng)
        choice = rng.randrange(8)
        if choice <= 2:  # a hostile value somewhere
            text, how = _with_hostile_value(header, rng)
            bodies.append(Body(model, text, {}, how))
        elif choice == 3:  # valid JSON, mutated bytes
            bodies.append(_mutated(Body(model, json.dumps(header).encode()), rng))
        elif choice == 4:  # a tensor twice, or one losing a field
            tensor = header["inputs"][0]
            if rng.random() < 0.5:
                header["inputs"].append(dict(tensor))
                how = "a tensor twice"
            else:
                key = rng.choice(list(tensor))
                del tensor[key]
                how = f"no {key}"
            bodies.append(Body(model, json.dumps(header).encode(), {}, how))
        elif choice <= 6:  # binary data, honest or not
            header, raw = _binary(header)
            text = json.dumps(header).encode()
            length = len(text)
            if rng.random() < 0.5:
                raw = raw[: rng.randint(0, len(raw))] + bytes(rng.randrange(8))
            lie = rng.choice([length, length, length - 1, length + 1, 0, len(text) + len(raw)])
            value = str(lie) if rng.random() < 0.8 else rng.choice(["-1", "1e3", "x", " 5"])
            how = f"binary: header says {value} of {length}, {len(raw)} bytes after"
            bodies.append(Body(model, text + raw, {rest.HEADER_LENGTH: value}, how))
        else:  # compressed, or said to be
            text = json.dumps(header).encode()
            squeezed = gzip.compress(text) if rng.random() < 0.5 else text
            body = Body(model, squeezed, {"Content-Encoding": "gzip"}, "gzip")
            bodies.append(_mutated(body, rng) if rng.random() < 0.7 else body)
    return bodies
