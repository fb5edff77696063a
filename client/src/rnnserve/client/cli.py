"""`rnnserve infer`: one request to a running server, from the command line.

rnnserve infer sine-lstm --values 0,0.1,0.2
rnnserve infer tagger-gru --text hello --url http://localhost:8000
rnnserve infer sine-gru --input 'x=[[[0.0],[0.1]]]' --output y --output hn --json
rnnserve infer tagger-gru --text h --sequence-id 7 --start --offset 0
rnnserve infer seq2seq-gru --text '22 nov 2026' --stream
RNNSERVE_TOKEN=... rnnserve infer tagger-gru --text hello --url host:8001 --ca ca.pem
RNNSERVE_TOKEN=... rnnserve infer tagger-gru --text hello --url https://host:8000 --ca ca.pem

`--url` is HOST:PORT or grpc://HOST:PORT (gRPC, the default localhost:8001; TLS with --tls,
--ca or --cert) or http://HOST:PORT (REST; no streaming there) or https://HOST:PORT (REST
over TLS). A bearer token comes from the environment variable RNNSERVE_TOKEN. Exit status:
0 answered, 1 the server refused (or could not be reached): one line `CODE: message` on
stderr, 2 a usage mistake.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from rnnserve.protocol.errors import UsageError
from rnnserve.protocol.sequences import CONTROL_DATATYPES, STATE_DATATYPE

if TYPE_CHECKING:
    import numpy as np

    from rnnserve.client.api import Client
    from rnnserve.client.wire import InferResult

TOKEN_ENV = "RNNSERVE_TOKEN"  # a bearer token, kept off the command line (and its history)


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _named(text: str) -> tuple[str, str]:
    name, sign, value = text.partition("=")
    if not sign or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "infer",
        help="send one inference request to a running server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # `--values -0.75,0.1`: argparse reads an argument that starts with "-" as an option
    # unless it is one plain negative number; no option here looks like a number, so a "-"
    # before a digit (or a point and a digit) starts a value.
    parser._negative_number_matcher = re.compile(r"^-\.?\d")
    parser.add_argument("model", help="model name, e.g. sine-lstm, tagger-gru, seq2seq-lstm")
    data = parser.add_argument_group("inputs (at least one)")
    data.add_argument("--values", type=_floats, help="sine input `x` as one sequence: 0,0.1,0.2")
    data.add_argument("--text", help="text input `text` for tagger and seq2seq models")
    data.add_argument(
        "--input",
        dest="inputs",
        action="append",
        type=_named,
        default=[],
        metavar="NAME=VALUE",
        help="an input as JSON (nested lists; its datatype from the model's metadata) or "
        "NAME=@file.npy; repeatable",
    )
    parser.add_argument(
        "--output",
        dest="outputs",
        action="append",
        default=[],
        metavar="NAME",
        help="an output to return, repeatable (default: y for --values, text_out for --text, "
        "else the model's default outputs)",
    )
    sequence = parser.add_argument_group("sequences (server-held state)")
    sequence.add_argument("--sequence-id", help="the sequence this request steps (int or string)")
    sequence.add_argument("--start", action="store_true", help="the sequence's first request")
    sequence.add_argument("--end", action="store_true", help="the sequence's last request")
    sequence.add_argument("--offset", type=int, help="parameter sequence_offset: steps before")
    parser.add_argument("--stream", action="store_true", help="ModelStreamInfer (gRPC only)")
    parser.add_argument("--json", action="store_true", help="print responses as JSON")
    parser.add_argument(
        "--url", default="localhost:8001", help="HOST:PORT, grpc://HOST:PORT or http://HOST:PORT"
    )
    parser.add_argument("--model-version", default="", help="version (default: newest)")
    parser.add_argument(
        "--max-output-length", type=int, default=None, help="seq2seq: most tokens to decode"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait")
    tls = parser.add_argument_group(
        "TLS (gRPC: any of these speaks TLS; REST: https://) and a token ($RNNSERVE_TOKEN)"
    )
    tls.add_argument("--tls", action="store_true", help="gRPC over TLS, trusting the system's CAs")
    tls.add_argument("--ca", type=Path, help="PEM CA certificates to trust")
    tls.add_argument("--cert", type=Path, help="PEM client certificate (mutual TLS)")
    tls.add_argument("--key", type=Path, help="PEM private key of --cert")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rnnserve.client.errors import InferenceError

    parameters = _parameters(args)
    with _connect(args) as client:
        try:
            inputs = _inputs(args, client)
            for result in _results(args, client, inputs, parameters):
                print(_shown(result, args.json), flush=True)
        except InferenceError as error:
            message = " ".join(error.message.split())  # one line, whatever the server said
            print(f"rnnserve infer: {error.code}: {message}", file=sys.stderr)
            return 1
    return 0


# What to send ---------------------------------------------------------------------


def _connect(args: argparse.Namespace) -> Client:
    scheme, _, address = args.url.rpartition("://")
    if (args.cert is None) != (args.key is None):
        raise UsageError("--cert and --key go together: the client certificate and its key")
    token = os.environ.get(TOKEN_ENV)
    files = {"root_certificates": args.ca, "private_key": args.key, "certificate_chain": args.cert}
    try:
        if scheme in ("", "grpc"):
            from rnnserve.client.client import RnnClient

            # Text is printed from its bytes, over either protocol.
            return RnnClient(
                address, args.timeout, tls=args.tls, token=token, decode_text=False, **files
            )
        if scheme in ("http", "https"):
            if args.stream:
                raise UsageError(
                    "--stream needs gRPC (the REST API has no streaming): use --url "
                    "grpc://HOST:PORT"
                )
            if scheme == "http" and (args.tls or args.ca or args.cert):
                raise UsageError("--tls, --ca and --cert speak TLS: use --url https://HOST:PORT")
            from rnnserve.client.rest import RestClient

            return RestClient(args.url, args.timeout, token=token, decode_text=False, **files)
    except OSError as error:  # a certificate or key file (ssl.SSLError is an OSError too)
        what = error.filename or "--ca, --cert or --key"
        raise UsageError(f"{what}: cannot be read: {error.strerror or error}") from None
    raise UsageError(
        f"--url {args.url}: expected HOST:PORT, grpc://HOST:PORT, http://HOST:PORT or "
        "https://HOST:PORT"
    )


def _parameters(args: argparse.Namespace) -> dict[str, Any]:
    parameters: dict[str, Any] = {}
    if args.max_output_length is not None:
        parameters["max_output_length"] = args.max_output_length
    if args.sequence_id is None:
        if args.start or args.end or args.offset is not None:
            raise UsageError("--start, --end and --offset belong to a sequence: add --sequence-id")
        return parameters
    sequence_id = args.sequence_id
    parameters["sequence_id"] = int(sequence_id) if sequence_id.isdecimal() else sequence_id
    parameters["sequence_start"] = args.start
    parameters["sequence_end"] = args.end
    if args.offset is not None:
        parameters["sequence_offset"] = args.offset
    return parameters


def _inputs(args: argparse.Namespace, client: Client) -> dict[str, np.ndarray]:
    from rnnserve.client.client import sine_input

    inputs: dict[str, Any] = {}
    if args.values is not None:
        inputs["x"] = sine_input(args.values)
    if args.text is not None:
        inputs["text"] = [args.text]
    if args.inputs:
        datatypes = _input_datatypes(client, args.model, args.model_version)
        for name, value in args.inputs:
            if name in inputs:
                raise UsageError(f"--input {name}: given twice")
            inputs[name] = _input(name, value, datatypes)
    if not inputs:
        raise UsageError("give the request an input: --values, --text or --input NAME=VALUE")
    return inputs


def _input_datatypes(client: Client, model: str, version: str) -> dict[str, str]:
    """The model's inputs and their datatypes, from its metadata: the plain inputs, and the
    state and control inputs its parameters name (Triton lists those apart)."""
    metadata = client.model_metadata(model, version)
    return {
        **{name: STATE_DATATYPE for name in metadata.state_inputs},
        **{
            name: CONTROL_DATATYPES[name]
            for name in metadata.control_inputs
            if name in CONTROL_DATATYPES
        },
        **{tensor.name: tensor.datatype for tensor in metadata.inputs},
    }


def _input(name: str, value: str, datatypes: dict[str, str]) -> np.ndarray:
    """`--input NAME=VALUE` as the array to send, in the datatype the model takes."""
    import numpy as np

    from rnnserve.protocol import codec

    datatype = datatypes.get(name)
    if datatype is None:
        raise UsageError(f"--input {name}: the model has no such input; it has {sorted(datatypes)}")
    if value.startswith("@"):
        array = _load(name, Path(value[1:]))
    else:
        try:
            array = np.asarray(json.loads(value))
        except ValueError as error:
            raise UsageError(f"--input {name}: {value!r} is not JSON ({error})") from None
    if datatype == "BYTES":
        return codec.wire_array(name, array)[1]
    target = codec.DTYPES[datatype]
    kinds, words = (
        ("b", "true or false") if target.kind == "b"
        else ("biu", "integers") if target.kind in "iu"
        else ("biuf", "numbers")
    )  # fmt: skip
    if array.dtype.kind not in kinds:
        raise UsageError(f"--input {name}: {datatype} takes {words}, not {value!r}")
    cast = array.astype(target)
    if array.dtype.kind in "iu" and not np.array_equal(cast, array):
        raise UsageError(f"--input {name}: a value does not fit {datatype}")
    return cast


def _load(name: str, path: Path) -> np.ndarray:
    import numpy as np

    try:
        return cast(np.ndarray, np.load(path, allow_pickle=False))  # Any: a .npy file's array
    except (OSError, ValueError) as error:
        raise UsageError(f"--input {name}=@{path}: not a readable .npy file ({error})") from None


# What comes back ------------------------------------------------------------------


def _results(
    args: argparse.Namespace, client: Client, inputs: dict[str, Any], parameters: dict[str, Any]
) -> Iterator[InferResult]:
    """The responses: one, or with --stream every one the server sends."""
    outputs = args.outputs or _shortcut_outputs(args)
    if not args.stream:
        yield client.infer_response(args.model, inputs, outputs, parameters, args.model_version)
        return
    from rnnserve.client.client import RnnClient, build_request

    assert isinstance(client, RnnClient), "_connect refuses --stream over REST"
    request = build_request(args.model, inputs, outputs, parameters, args.model_version)
    yield from client.stream(iter([request]), timeout=args.timeout)


def _shortcut_outputs(args: argparse.Namespace) -> list[str]:
    """What --values and --text answer with, unless --output says otherwise."""
    if args.inputs:
        return []
    return ["y"] if args.values is not None else ["text_out"] if args.text is not None else []


def _shown(result: InferResult, as_json: bool) -> str:
    """A response as printed: JSON (the REST API's response object), or its outputs'
    values: alone for one output, `name: values` lines for several."""
    from rnnserve.protocol import codec, rest

    if as_json:
        outputs = []
        for name, data in result.outputs.items():
            datatype, array = codec.wire_array(name, data)
            outputs.append(rest.tensor_to_json(name, datatype, array, None))
        return json.dumps(
            {
                "model_name": result.model_name,
                "model_version": result.model_version,
                "id": result.id,
                "parameters": result.parameters,
                "outputs": outputs,
            }
        )
    if len(result.outputs) == 1:
        return _values(next(iter(result.outputs.values())))
    return "\n".join(f"{name}: {_values(data)}" for name, data in result.outputs.items())


def _values(data: np.ndarray) -> str:
    if data.dtype == object:  # text: each element decoded
        texts = [item.decode(errors="replace") for item in data.reshape(-1)]
        return texts[0] if len(texts) == 1 else json.dumps(texts)
    return ",".join(f"{value:.6g}" for value in data.reshape(-1))
