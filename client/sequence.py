"""A stateful sequence: steps sharing a `sequence_id`, the server keeping the RNN state.

The first step carries `sequence_start`, the step passed `end=True` carries
`sequence_end` (Triton's sequence parameters). Steps go over unary ModelInfer or, with
`streaming=True`, over one ModelStreamInfer stream that stays open between steps.

Every step carries `sequence_offset`, the time steps the server said the sequence had
consumed before it, so that the server applies each step exactly once. A step that failed
because the server could not be reached, did not answer or dropped the call (UNAVAILABLE,
DEADLINE_EXCEEDED, CANCELLED, a broken stream: the step may or may not have been applied)
is sent again, the same, with bounded backoff (client/retry.py), on a new stream when
streaming: the server applies it if it had not, or answers it again if it had. A sequence
therefore continues exactly after a server crash, or fails with a clear error:
`SequenceOutOfStep` when the server counts other time steps than the client, the server's
refusal when it lost the sequence; never with a silently wrong answer. A server that does
not count steps (no `sequence_offset` in its answers) gets no retries.

Every call of a sequence carries its id as the gRPC header `sequence-id` (ROUTING_HEADER),
for load balancers that do not read the request body: a consistent-hash policy on that
header (Envoy's ring hash, gRPC's ring_hash) keeps a sequence on one replica, so that the
owned state store rarely has to hand its state over (docs/scaling.md).
"""

from __future__ import annotations

import queue
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from rnnserve.client.client import InferResult, RnnClient, build_request
from rnnserve.client.errors import InferenceError, SequenceOutOfStep
from rnnserve.client.retry import DEFAULT_RETRY, NO_RETRIES, RetryPolicy, retrying
from rnnserve.protocol.codec import Parameter
from rnnserve.protocol.sequences import SEQUENCE_OFFSET

FINAL = "triton_final_response"
ROUTING_HEADER = "sequence-id"


class SequenceSession:
    def __init__(
        self,
        client: RnnClient,
        model: str,
        sequence_id: int | str,
        streaming: bool = False,
        version: str = "",
        *,
        offsets: bool = True,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        self.client = client
        self.model = model
        self.version = version
        self.sequence_id = sequence_id
        self.offsets = offsets  # send sequence_offset (and retry) with every step
        self.retry = retry
        self.offset = 0  # the sequence's time steps, as the server last counted them
        self.routing = ((ROUTING_HEADER, str(sequence_id)),)  # headers of every call
        self.retries = 0  # steps sent again after a failure
        self._started = False
        self._streaming = streaming
        self._requests: queue.Queue[Any] | None = None
        self._replies: Any = None
        if streaming:
            self._open_stream()

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
        start = not self._started
        sequence: dict[str, Parameter] = {
            "sequence_id": self.sequence_id,
            "sequence_start": start,
        }
        if end:
            sequence["sequence_end"] = True
        if self.offsets:
            sequence[SEQUENCE_OFFSET] = 0 if start else self.offset
        request = build_request(
            self.model, inputs, outputs, {**(parameters or {}), **sequence}, self.version
        )
        policy = self.retry if self.offsets else NO_RETRIES
        try:
            responses = retrying(lambda: self._send(request), policy, self._before_retry)
        except InferenceError as error:
            if self.offsets and error.sequence_offset is not None:
                raise SequenceOutOfStep(error, 0 if start else self.offset) from None
            raise
        counted = responses[-1].parameters.get(SEQUENCE_OFFSET)
        if counted is None:  # a server that does not count steps: nothing to retry safely
            self.offsets = False
        else:
            self.offset = int(counted)
        self._started = not end
        return responses

    def _send(self, request: Any) -> list[InferResult]:
        if self._requests is None:
            return [self.client.infer_response_of(request, self.routing)]
        self._requests.put(request)
        responses: list[InferResult] = []
        for reply in self.client.stream_replies(self._replies):
            responses.append(reply)
            if reply.parameters.get(FINAL, True):
                return responses
        raise InferenceError("UNAVAILABLE", "the server closed the stream")

    def _open_stream(self) -> None:
        self._requests = queue.Queue()
        requests: Iterator[Any] = iter(self._requests.get, None)
        self._replies = self.client.stub.ModelStreamInfer(requests, metadata=self.routing)

    def _before_retry(self, error: InferenceError) -> None:
        """Counts the retry; on a stream, opens a new one (the old one broke, or its server
        is going away)."""
        self.retries += 1
        if self._streaming:
            self._replies.cancel()
            self.close()
            self._open_stream()

    def close(self) -> None:
        if self._requests is not None:
            self._requests.put(None)
            self._requests = None

    def __enter__(self) -> SequenceSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
