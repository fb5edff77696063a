"""`rnnserve infer`: one request to a running server, from the command line.

rnnserve infer sine-lstm --values 0,0.1,0.2
rnnserve infer tagger-gru --text hello
RNNSERVE_TOKEN=... rnnserve infer tagger-gru --text hello --url host:8001 --ca ca.pem
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rnnserve.errors import UsageError

TOKEN_ENV = "RNNSERVE_TOKEN"  # a bearer token, kept off the command line (and its history)


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("infer", help="send one inference request to a running server")
    parser.add_argument("model", help="model name, e.g. sine-lstm, tagger-gru, seq2seq-lstm")
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--values", type=_floats, help="sine input sequence: 0,0.1,0.2")
    data.add_argument("--text", help="text for tagger and seq2seq models")
    parser.add_argument("--url", default="localhost:8001", help="server host:port")
    parser.add_argument("--model-version", default="", help="version (default: newest)")
    parser.add_argument(
        "--max-output-length", type=int, default=None, help="seq2seq: most tokens to decode"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait")
    tls = parser.add_argument_group("TLS (any of these speaks TLS) and authentication")
    tls.add_argument("--tls", action="store_true", help="TLS, trusting the system's CAs")
    tls.add_argument("--ca", type=Path, help="PEM CA certificates to trust")
    tls.add_argument("--cert", type=Path, help="PEM client certificate (mutual TLS)")
    tls.add_argument("--key", type=Path, help="PEM private key of --cert")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rnnserve.client.client import RnnClient, sine_input
    from rnnserve.client.errors import InferenceError

    parameters = {}
    if args.max_output_length is not None:
        parameters["max_output_length"] = args.max_output_length
    if (args.cert is None) != (args.key is None):
        raise UsageError("--cert and --key go together: the client certificate and its key")
    try:
        client = RnnClient(
            args.url, timeout_s=args.timeout, tls=args.tls, root_certificates=args.ca,
            private_key=args.key, certificate_chain=args.cert, token=os.environ.get(TOKEN_ENV),
        )  # fmt: skip
    except OSError as error:
        raise UsageError(f"{error.filename}: cannot be read: {error.strerror}") from None
    with client:
        try:
            if args.values is not None:
                out = client.infer(
                    args.model,
                    {"x": sine_input(args.values)},
                    ["y"],
                    parameters,
                    args.model_version,
                )
                print(",".join(f"{v:.6g}" for v in out["y"].reshape(-1)))
            else:
                out = client.infer(
                    args.model,
                    {"text": [args.text]},
                    ["text_out"],
                    parameters,
                    args.model_version,
                )
                print(out["text_out"][0].decode())
        except InferenceError as error:
            raise UsageError(f"{args.url}: {error}") from None
    return 0
