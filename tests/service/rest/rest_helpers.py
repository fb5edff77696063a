"""Helpers for the REST tests: curl, as a user would run it, and the answer it got."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

import numpy as np

SINE_X = np.sin(np.linspace(0, 3, 2 * 7, dtype=np.float32)).reshape(2, 7, 1)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def curl(url: str, *args: str, data: bytes | None = None) -> Answer:
    """curl URL ARGS... (with `data` as the POST body when given): the final answer's
    status, headers and body."""
    binary = shutil.which("curl")
    assert binary, "curl is not installed"
    command = [binary, "-sS", "-D", "-", url, *args]
    if data is not None:
        command += ["--data-binary", "@-"]
    done = subprocess.run(command, input=data, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    output = done.stdout
    while True:  # skip interim answers (100 Continue)
        head, _, output = output.partition(b"\r\n\r\n")
        status_line, *lines = head.decode().split("\r\n")
        status = int(status_line.split()[1])
        if status >= 200:
            break
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(status, headers, output)


def post_json(url: str, body: dict[str, Any], *args: str) -> Answer:
    return curl(url, "-H", "Content-Type: application/json", *args, data=json.dumps(body).encode())


def sine_body(x: np.ndarray = SINE_X, **extra: Any) -> dict[str, Any]:
    """An infer body carrying a sine model's x as JSON data."""
    tensor = {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
    return {"inputs": [tensor], **extra}


def text_body(*texts: str, **extra: Any) -> dict[str, Any]:
    tensor = {"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": list(texts)}
    return {"inputs": [tensor], **extra}
