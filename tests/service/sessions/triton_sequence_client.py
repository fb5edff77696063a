"""A sine sequence streamed through tritonclient's own sequence API, run as a subprocess
so that it steps its sequence while the test's own clients step theirs.

    python triton_sequence_client.py ADDRESS MODEL SEQUENCE_ID IN.npz OUT.npy

IN.npz holds `x` (the whole sequence, [steps]) and `chunks` (the piece sizes); OUT.npy
receives `y` of every piece, joined, as [steps].
"""

from __future__ import annotations

import queue
import sys

import numpy as np
import tritonclient.grpc as triton


def main(address: str, model: str, sequence_id: int, data_path: str, out_path: str) -> None:
    data = np.load(data_path)
    x, chunks = data["x"].astype(np.float32), [int(n) for n in data["chunks"]]
    results: queue.Queue = queue.Queue()
    client = triton.InferenceServerClient(address)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    pieces = []
    position = 0
    for index, length in enumerate(chunks):
        tensor = triton.InferInput("x", [1, length, 1], "FP32")
        tensor.set_data_from_numpy(x[None, position : position + length, None])
        position += length
        client.async_stream_infer(
            model,
            [tensor],
            outputs=[triton.InferRequestedOutput("y")],
            sequence_id=sequence_id,
            sequence_start=index == 0,
            sequence_end=index == len(chunks) - 1,
        )
        result, error = results.get(timeout=60)
        if error is not None:
            raise SystemExit(f"stream error: {error}")
        pieces.append(result.as_numpy("y").reshape(-1))
    client.stop_stream()
    client.close()
    np.save(out_path, np.concatenate(pieces))


if __name__ == "__main__":
    address, model, sequence_id, data_path, out_path = sys.argv[1:]
    main(address, model, int(sequence_id), data_path, out_path)
