"""A stateful sequence: steps sharing a `sequence_id`, the server keeping the RNN state.

The first step carries `sequence_start`, the step passed `end=True` carries
`sequence_end` (Triton's sequence parameters). Steps go over unary ModelInfer, through any
client (`api.Client`: RnnClient over gRPC, RestClient over REST) or, with
`streaming=True`, over one ModelStreamInfer stream that stays open between steps (gRPC
only: a streaming sequence over REST is refused with ValueError).

Every step carries `sequence_offset`, the time steps the server said the sequence had
consumed before it, so that the server applies each step exactly once. A step that failed
because the server could not be reached, did not answer or dropped the call (UNAVAILABLE,
DEADLINE_EXCEEDED, CANCELLED, a broken stream, or ABORTED with `sequence_outcome`
"unknown", a state store that did not answer its write: the step may or may not have been
applied) is sent again, the same, with bounded backoff (client/retry.py), on a new stream when
streaming: the server applies it if it had not, or answers it again if it had. A sequence
therefore continues exactly after a server crash, or fails with a clear error:
`SequenceOutOfStep` when the server counts other time steps than the client, the server's
refusal when it lost the sequence; never with a silently wrong answer. A server that does
not count steps (no `sequence_offset` in its answers) gets no retries.

A start carries offset 0. When the server refuses it because the id's sequence is live and
has gone on past its first step (an earlier run of the id, not ended: the server takes a
start at 0 there for a late attempt at that run's first step), the start is sent again,
once, at the server's count, which begins the sequence again: a session always begins its
sequence, as a start without offsets does.

Each step waits at most `timeout` seconds for its answer (its final one, streamed: a
stream not answered in time is cancelled and the next try opens another); a stream lives
at most `stream_timeout` seconds (None: as long as the session).

Every call of a sequence carries its id as the header `sequence-id` (ROUTING_HEADER: gRPC
metadata, or an HTTP header over REST), for load balancers that do not read the request
body: a consistent-hash policy on that header (Envoy's ring hash, gRPC's ring_hash) keeps
a sequence on one replica, so that the owned state store rarely has to hand its state
over (docs/scaling.md).

`SequenceSteps` is the bookkeeping, without I/O, that SequenceSession (here) and
`rnnserve.client.aio.AsyncSequenceSession` share.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rnnserve.client.api import Client, Options
from rnnserve.client.client import RnnClient
from rnnserve.client.connection import Connection
from rnnserve.client.errors import InferenceError, SequenceOutOfStep
from rnnserve.client.retry import DEFAULT_RETRY, NO_RETRIES, RetryPolicy, retrying
from rnnserve.client.stream import Stream, closed_stream
from rnnserve.client.wire import InferResult, Inputs, build_request
from rnnserve.protocol.codec import Parameter
from rnnserve.protocol.sequences import SEQUENCE_OFFSET

FINAL = "triton_final_response"
ROUTING_HEADER = "sequence-id"


class SequenceSteps:
    """A sequence's steps as the client counts them: the requests to send, what a failure
    means, what an answer changes."""

    def __init__(
        self,
        client: Options,
        model: str,
        sequence_id: int | str,
        streaming: bool = False,
        version: str = "",
        *,
        offsets: bool = True,
        retry: RetryPolicy = DEFAULT_RETRY,
        timeout: float | None = None,
        stream_timeout: float | None = None,
    ) -> None:
        """A sequence of `model` on `client`. `offsets`: send `sequence_offset` with every
        step (and retry it); `timeout`: each step's wait for its answer (None: the
        client's `timeout_s`); `stream_timeout`: a stream's deadline (None: none).
        `streaming` needs a gRPC client (Connection): ValueError otherwise."""
        if streaming and not isinstance(client, Connection):
            raise ValueError(
                f"a streaming sequence needs gRPC's ModelStreamInfer, which "
                f"{type(client).__name__} cannot call (the REST API has no streaming): "
                "use a gRPC client, or streaming=False"
            )
        self.client = client
        self.model = model
        self.version = version
        self.sequence_id = sequence_id
        self.streaming = streaming
        self.offsets = offsets  # send sequence_offset (and retry) with every step
        self.retry = retry
        self.timeout = timeout
        self.stream_timeout = stream_timeout
        self.offset = 0  # the sequence's time steps, as the server last counted them
        self.routing = ((ROUTING_HEADER, str(sequence_id)),)  # headers of every call
        self.retries = 0  # steps sent again after a failure
        self._started = False

    def _request(
        self,
        inputs: Inputs,
        outputs: Sequence[str],
        parameters: Mapping[str, Parameter] | None,
        end: bool,
        begin_at: int = 0,
    ) -> Any:
        """The next step's request; a start's offset is `begin_at` (_begin_again_at)."""
        sequence: dict[str, Parameter] = {
            "sequence_id": self.sequence_id,
            "sequence_start": not self._started,
        }
        if end:
            sequence["sequence_end"] = True
        if self.offsets:
            sequence[SEQUENCE_OFFSET] = self.offset if self._started else begin_at
        return build_request(
            self.model, inputs, outputs, {**(parameters or {}), **sequence}, self.version
        )

    def _policy(self) -> RetryPolicy:
        return self.retry if self.offsets else NO_RETRIES

    def _step_timeout(self, timeout: float | None) -> float | None:
        if timeout is not None:
            return timeout
        return self.client.timeout(self.timeout)

    def _begin_again_at(self, error: InferenceError, begin_at: int) -> int | None:
        """The offset to send a refused start again at: the server's count, when the start
        was refused because its id's sequence is live and has gone on (an earlier run of the
        id); None otherwise, and for a start already sent at the count (`begin_at`)."""
        counted = error.sequence_offset
        if self._started or not self.offsets or begin_at or error.code != "FAILED_PRECONDITION":
            return None
        return counted or None

    def _refused(self, error: InferenceError) -> InferenceError:
        """What a step's failure raises: SequenceOutOfStep when the server counts the
        sequence's time steps otherwise, the failure itself otherwise."""
        if self.offsets and error.sequence_offset is not None:
            return SequenceOutOfStep(error, self.offset if self._started else 0)
        return error

    def _applied(self, responses: list[InferResult], end: bool) -> list[InferResult]:
        """Counts the step the server answered with `responses`."""
        counted = responses[-1].parameters.get(SEQUENCE_OFFSET)
        if counted is None:  # a server that does not count steps: nothing to retry safely
            self.offsets = False
        else:
            self.offset = int(counted)
        self._started = not end
        return responses


def is_final(result: InferResult) -> bool:
    """The last response of a step (a streamed seq2seq step answers once per token)."""
    return bool(result.parameters.get(FINAL, True))


def time_left(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)


def deadline_of(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


class SequenceSession(SequenceSteps):
    client: Client
    _stream: Stream | None = None  # open while streaming steps

    def step(
        self,
        inputs: Inputs,
        outputs: Sequence[str] = (),
        parameters: Mapping[str, Parameter] | None = None,
        end: bool = False,
        *,
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        """One step; returns the outputs of its final response."""
        return self.step_responses(inputs, outputs, parameters, end, timeout=timeout)[-1].outputs

    def step_responses(
        self,
        inputs: Inputs,
        outputs: Sequence[str] = (),
        parameters: Mapping[str, Parameter] | None = None,
        end: bool = False,
        *,
        timeout: float | None = None,
    ) -> list[InferResult]:
        """One step; every response it produced (several for streamed decoding)."""
        timeout = self._step_timeout(timeout)
        begin_at = 0
        while True:
            request = self._request(inputs, outputs, parameters, end, begin_at)
            send = functools.partial(self._send, request, timeout)
            try:
                responses = retrying(send, self._policy(), self._before_retry)
            except InferenceError as error:
                again = self._begin_again_at(error, begin_at)
                if again is None:
                    raise self._refused(error) from None
                begin_at = again
            else:
                return self._applied(responses, end)

    def _send(self, request: Any, timeout: float | None) -> list[InferResult]:
        if not self.streaming:
            return [self.client.infer_response_of(request, timeout=timeout, headers=self.routing)]
        assert isinstance(self.client, RnnClient), "SequenceSteps refuses to stream otherwise"
        if self._stream is None or self._stream.done:
            self._stream = Stream(self.client, None, self.stream_timeout, self.routing)
        self._stream.send(request)
        deadline = deadline_of(timeout)
        responses: list[InferResult] = []
        while (result := self._stream.receive(time_left(deadline))) is not None:
            responses.append(result)
            if is_final(result):
                return responses
        raise closed_stream()

    def _before_retry(self, error: InferenceError) -> None:
        """Counts the retry; on a stream, opens a new one (the old one broke, or its server
        is going away)."""
        self.retries += 1
        if self._stream is not None:
            self._stream.cancel()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def __enter__(self) -> SequenceSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
