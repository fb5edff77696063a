"""`rnnserve demo`: the first run. Builds the default models if absent, starts the server,
drives it with the client the way the PyTorch RNN lessons do (sine -> cosine streamed
through a sequence, "hello" -> "ohlol", a seq2seq date), then stops it with SIGTERM.
"""

from __future__ import annotations

import argparse
import io
import math
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from rnnserve.protocol.errors import UsageError

if TYPE_CHECKING:
    from rnnserve.client.client import RnnClient

SINE_DT = 0.1  # the sine models' time step (export/tasks/sine.py)
SINE_STEPS = 160
SINE_CHUNK = 20
# Half a period: from a zero state the model cannot tell a rising sine from a falling one
# until it has seen the wave turn.
SINE_WARM_UP = 32
SEQ2SEQ_EXAMPLES = ("22 nov 2026", "3 mar 2041", "7/4/76")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "demo", help="build the default models if absent, serve them and drive the server"
    )
    parser.add_argument(
        "--model-repository", type=Path, default=Path("models"), help="default: ./models"
    )
    parser.add_argument(
        "--preset",
        default="default",
        help="training preset for models that must be built (default; tiny trains briefly)",
    )
    parser.add_argument("--grpc-port", type=int, default=0, help="default: a free port")
    parser.add_argument("--http-port", type=int, default=0, help="default: a free port")
    parser.add_argument("--metrics-port", type=int, default=0, help="default: a free port")
    parser.add_argument(
        "--startup-timeout-s", type=float, default=300.0, help="wait this long for readiness"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # Line by line: the server's log shares the terminal (or pipe), and the two read in the
    # order things happened only if neither holds lines back.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    ensure_models(args.model_repository, args.preset)
    grpc_port, http_port = args.grpc_port or free_port(), args.http_port or free_port()
    metrics_port = args.metrics_port or free_port()
    with served(
        args.model_repository, grpc_port, http_port, metrics_port, args.startup_timeout_s
    ) as client:
        show_addresses(grpc_port, http_port, metrics_port)
        show_provider(client)
        stream_sine(client)
        tag_hello(client)
        translate_dates(client)
        print("\nstopping the server (SIGTERM)")
    print("server stopped cleanly (SIGTERM, exit 0)")
    return 0


def ensure_models(root: Path, preset: str) -> None:
    """Build the default models that the repository lacks; keep those it has."""
    from rnnserve.export.config import DEFAULT_NAMES

    missing = [name for name in DEFAULT_NAMES if not (root / name).is_dir()]
    if not missing:
        return
    print(f"building {len(missing)} default models into {root}/ (preset {preset}) ...")
    # torch: only when there is something to build
    from rnnserve.export.build import build_repository, summary_table

    # skip_existing: a model another process finished meanwhile is kept, not an error.
    results = build_repository(
        root, names=missing, preset=preset, skip_existing=True, progress=True
    )
    print(summary_table(results))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def served(
    root: Path, grpc_port: int, http_port: int, metrics_port: int, startup_timeout_s: float
) -> Iterator[RnnClient]:
    """`rnnserve serve` as a child process, and a client connected once it is ready.

    Leaving the block sends SIGTERM and requires a clean exit (status 0).
    """
    from rnnserve.client.client import RnnClient

    command = [sys.executable, "-m", "rnnserve", "serve", "--model-repository", str(root)]
    command += ["--host", "127.0.0.1", "--grpc-port", str(grpc_port)]
    command += ["--http-port", str(http_port), "--metrics-port", str(metrics_port)]
    print(f"starting: {' '.join(command[2:])}")
    server = subprocess.Popen(command)
    try:
        with RnnClient(f"127.0.0.1:{grpc_port}", timeout_s=30.0) as client:
            wait_ready(client, server, startup_timeout_s)
            yield client
    finally:
        stop(server)


def wait_ready(client: RnnClient, server: subprocess.Popen[bytes], timeout_s: float) -> None:
    from rnnserve.client.errors import InferenceError

    deadline = time.monotonic() + timeout_s
    while True:
        if server.poll() is not None:
            raise UsageError(f"the server exited with status {server.returncode} while starting")
        try:
            if client.server_ready():
                return
        except InferenceError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise UsageError(f"the server was not ready after {timeout_s:g} s")
        time.sleep(0.2)


def stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
    code = server.wait(timeout=60)
    if code != 0:
        raise UsageError(f"the server exited with status {code} after SIGTERM, expected 0")


def show_addresses(grpc_port: int, http_port: int, metrics_port: int) -> None:
    """Where the server answers, for as long as the demo runs."""
    print("\nthe server answers until the demo stops it:")
    print(f"  gRPC     rnnserve infer tagger-gru --text hello --url 127.0.0.1:{grpc_port}")
    print(f"  REST     curl http://127.0.0.1:{http_port}/v2/models/sine-gru")
    print(f"  metrics  curl http://127.0.0.1:{metrics_port}/metrics")


def show_provider(client: RnnClient) -> None:
    """Where the models run: the provider is in each model's metadata parameters."""
    provider = client.model_metadata("sine-lstm").parameters.get("provider", "unknown")
    print(f"models run on ONNX Runtime's {provider}")


def stream_sine(client: RnnClient, model: str = "sine-lstm") -> None:
    """sin(t) in chunks through one sequence: the server carries the state between chunks."""
    import numpy as np

    from rnnserve.client.client import sine_input

    t = SINE_DT * np.arange(SINE_STEPS)
    predicted = []
    for start in range(0, SINE_STEPS, SINE_CHUNK):
        chunk = np.sin(t[start : start + SINE_CHUNK])
        parameters = {
            "sequence_id": 1,
            "sequence_start": start == 0,
            "sequence_end": start + SINE_CHUNK >= SINE_STEPS,
        }
        out = client.infer(model, {"x": sine_input(chunk)}, ["y"], parameters)
        predicted.extend(out["y"].reshape(-1).tolist())
    print(f"\n{model}: sin(t) streamed in chunks of {SINE_CHUNK} steps through sequence 1")
    print(f"{'step':>5} {'t':>6} {'sin(t)':>8} {'predicted':>10} {'cos(t)':>8}")
    for step in range(0, SINE_STEPS, 10):
        print(
            f"{step:>5} {t[step]:>6.2f} {math.sin(t[step]):>8.3f} "
            f"{predicted[step]:>10.3f} {math.cos(t[step]):>8.3f}"
        )
    errors = np.abs(np.asarray(predicted[SINE_WARM_UP:]) - np.cos(t[SINE_WARM_UP:]))
    print(
        f"|predicted - cos(t)| after a {SINE_WARM_UP}-step warm-up: "
        f"mean {errors.mean():.3f}, largest {errors.max():.3f}"
    )


def tag_hello(client: RnnClient) -> None:
    print("\ntagger: each character's next character")
    for cell in ("rnn", "lstm", "gru"):
        print(f"  tagger-{cell}: 'hello' -> {client.tag('hello', model=f'tagger-{cell}')!r}")


def translate_dates(client: RnnClient, model: str = "seq2seq-gru") -> None:
    print(f"\n{model}: written dates to ISO dates, decoded token by token")
    for text in SEQ2SEQ_EXAMPLES:
        print(f"  {text!r} -> {client.translate(text, model=model)!r}")
