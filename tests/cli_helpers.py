"""`rnnserve ARGS` run in the test's own process: the command line's main() with its output
captured, answering what a subprocess would (exit status, stdout, stderr) without the
second or more of CPU a fresh interpreter spends importing grpc, numpy or torch. The
entry point itself (`python -m rnnserve`) is run as a process by tests/service/
test_serve_cli.py and tests/deploy/test_first_run.py."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from rnnserve.cli import main

TOKEN_ENV = "RNNSERVE_TOKEN"


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def rnnserve(*args: str, env: Mapping[str, str] | None = None) -> Ran:
    """`rnnserve ARGS` with `env` added to the environment (RNNSERVE_TOKEN left out unless
    given)."""
    out, err = io.StringIO(), io.StringIO()
    with _environment(env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exit:  # argparse's usage errors
            code = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
    return Ran(code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def _environment(env: Mapping[str, str] | None) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.pop(TOKEN_ENV, None)
    os.environ.update(env or {})
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
