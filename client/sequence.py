"""A stateful sequence: steps sharing a `sequence_id`, the server keeping the RNN state.

The first step carries `sequence_start`, the step passed `end=True` carries
`sequence_end` (Triton's sequence parameters). Steps go over unary ModelInfer or, with
`streaming=True`, over one ModelStreamInfer stream that stays open between steps.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from rnnserve.client.client import InferResult, RnnClient, build_request
from rnnserve.client.errors import InferenceError
from rnnserve.protocol.codec import Parameter

FINAL = "triton_final_response"


class SequenceSession:
    def __init__(
        self,
        client: RnnClient,
        model: str,
        sequence_id: int | str,
        streaming: bool = False,
        version: str = "",
    ) -> None:
        self.client = client
        self.model = model
        self.version = version
        self.sequence_id = sequence_id
        self._started = False
        self._requests: queue.Queue[Any] | None = None
        self._replies: Iterator[Any] | None = None
        if streaming:
            self._requests = queue.Queue()
            self._replies = client.stub.ModelStreamInfer(iter(self._requests.get, None))

    def step(
        self,
        inputs: Mapping[str, np.ndarray | str | list],
        outputs: Sequence[str] = (),
        parameters: Mapping[str, Parameter] | None = None,
        end: bool = False,
    ) -> dict[str, np.ndarray]:
        """One step; returns the outputs of its final response."""
        return self.step_responses(inputs, outputs, parameters, end)[-1].outputs

    def step_responses(
        self,
        inputs: Mapping[str, np.ndarray | str | list],
        outputs: Sequence[str] = (),
        parameters: Mapping[str, Parameter] | None = None,
        end: bool = False,
    ) -> list[InferResult]:
        """One step; every response it produced (several for streamed decoding)."""
        sequence = {"sequence_id": self.sequence_id, "sequence_start": not self._started}
        if end:
            sequence["sequence_end"] = True
        request = build_request(
            self.model, inputs, outputs, {**(parameters or {}), **sequence}, self.version
        )
        responses = self._send(request)
        self._started = not end
        return responses

    def _send(self, request: Any) -> list[InferResult]:
        if self._requests is None:
            return [self.client.infer_response_of(request)]
        self._requests.put(request)
        responses: list[InferResult] = []
        for reply in self.client.stream_replies(self._replies):
            responses.append(reply)
            if reply.parameters.get(FINAL, True):
                return responses
        raise InferenceError("UNAVAILABLE", "the server closed the stream")

    def close(self) -> None:
        if self._requests is not None:
            self._requests.put(None)
            self._requests = None

    def __enter__(self) -> SequenceSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
