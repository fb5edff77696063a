"""`rnnserve infer`: one request to a running server, from the command line.

rnnserve infer sine-lstm --values 0,0.1,0.2
rnnserve infer tagger-gru --text hello
"""

from __future__ import annotations

import argparse

from rnnserve.errors import UsageError


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
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rnnserve.client.client import RnnClient, sine_input
    from rnnserve.client.errors import InferenceError

    parameters = {}
    if args.max_output_length is not None:
        parameters["max_output_length"] = args.max_output_length
    with RnnClient(args.url, timeout_s=args.timeout) as client:
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
