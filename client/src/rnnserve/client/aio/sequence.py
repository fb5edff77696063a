"""AsyncSequenceSession: SequenceSession for the asyncio clients (AsyncRnnClient, and
AsyncRestClient without streaming), its steps to await.

The bookkeeping (requests, offsets, what a failure means) is SequenceSteps', shared with the
sync session; only sending, waiting and retrying are its own (client/sequence.py says how
a sequence's steps go).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rnnserve.client.aio.client import AsyncRnnClient
from rnnserve.client.aio.stream import AsyncStream
from rnnserve.client.api import AsyncClient
from rnnserve.client.errors import InferenceError
from rnnserve.client.retry import retrying_async
from rnnserve.client.sequence import SequenceSteps, deadline_of, is_final, time_left
from rnnserve.client.stream import closed_stream
from rnnserve.client.wire import InferResult, Inputs
from rnnserve.protocol.codec import Parameter


class AsyncSequenceSession(SequenceSteps):
    client: AsyncClient
    _stream: AsyncStream | None = None  # open while streaming steps

    async def step(
        self,
        inputs: Inputs,
        outputs: Sequence[str] = (),
        parameters: Mapping[str, Parameter] | None = None,
        end: bool = False,
        *,
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        """One step; returns the outputs of its final response."""
        responses = await self.step_responses(inputs, outputs, parameters, end, timeout=timeout)
        return responses[-1].outputs

    async def step_responses(
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
                responses = await retrying_async(send, self._policy(), self._before_retry)
            except InferenceError as error:
                again = self._begin_again_at(error, begin_at)
                if again is None:
                    raise self._refused(error) from None
                begin_at = again
            else:
                return self._applied(responses, end)

    async def _send(self, request: Any, timeout: float | None) -> list[InferResult]:
        if not self.streaming:
            return [
                await self.client.infer_response_of(request, timeout=timeout, headers=self.routing)
            ]
        assert isinstance(self.client, AsyncRnnClient), "SequenceSteps refuses to stream otherwise"
        if self._stream is None or self._stream.done:
            self._stream = AsyncStream(self.client, None, self.stream_timeout, self.routing)
        await self._stream.send(request)
        deadline = deadline_of(timeout)
        responses: list[InferResult] = []
        while (result := await self._stream.receive(time_left(deadline))) is not None:
            responses.append(result)
            if is_final(result):
                return responses
        raise closed_stream()

    async def _before_retry(self, error: InferenceError) -> None:
        """Counts the retry; on a stream, opens a new one (the old one broke, or its server
        is going away)."""
        self.retries += 1
        if self._stream is not None:
            self._stream.cancel()

    async def close(self) -> None:
        if self._stream is not None:
            await self._stream.close()
            self._stream = None

    async def __aenter__(self) -> AsyncSequenceSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
