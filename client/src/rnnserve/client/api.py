"""The interface every client offers, whatever its protocol: `Client` (RnnClient over gRPC,
RestClient over REST) and `AsyncClient` (AsyncRnnClient, AsyncRestClient), the same methods
with the same arguments, results and exceptions; code that takes a `Client` works over
either protocol.

A protocol's client implements the calls themselves (health, metadata, one ModelInfer of a
request built by `wire.build_request`); what is built on them is written here, once for the
sync clients and once for the asyncio ones: text decoding, multi-session steps and the
default models' shortcuts. Streaming (ModelStreamInfer) is gRPC's alone: `RnnClient.stream`.

Every method takes a `timeout` (seconds; None: the client's `timeout_s`) and raises the
InferenceError subclass of the status the call failed with (client/errors.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, Self

import numpy as np

from rnnserve.client.metadata import ModelMetadata, ServerMetadata
from rnnserve.client.wire import (
    InferResult,
    Inputs,
    TextOutputs,
    build_request,
    row_errors,
    session_controls,
    sine_input,
    sine_result,
    text_of,
    translate_parameters,
)
from rnnserve.protocol.codec import Parameter

Headers = Sequence[tuple[str, str]]


class Options:
    """What every client holds, whatever its protocol: each call's default timeout, the
    bearer token that goes with every call, and what has been learnt of models' text
    outputs."""

    def __init__(self, timeout_s: float | None, token: str | None, decode_text: bool) -> None:
        self.timeout_s = timeout_s
        self.metadata: tuple[tuple[str, str], ...] = (
            () if token is None else (("authorization", f"Bearer {token}"),)
        )
        self.text = TextOutputs(decode_text)

    def headers(self, extra: Headers = ()) -> tuple[tuple[str, str], ...]:
        """A call's headers (gRPC metadata, HTTP headers): the client's own (its token),
        then the call's (a sequence's routing header)."""
        return (*self.metadata, *extra)

    def timeout(self, timeout: float | None) -> float | None:
        """A call's timeout: its own, else the client's."""
        return self.timeout_s if timeout is None else timeout


class Client(Options, ABC):
    """A sync client; RnnClient and RestClient implement the abstract calls."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # The protocol's calls ---------------------------------------------------------------

    @abstractmethod
    def server_live(self, *, timeout: float | None = None) -> bool: ...

    @abstractmethod
    def server_ready(self, *, timeout: float | None = None) -> bool: ...

    @abstractmethod
    def model_ready(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> bool: ...

    @abstractmethod
    def server_metadata(self, *, timeout: float | None = None) -> ServerMetadata: ...

    @abstractmethod
    def model_metadata(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> ModelMetadata: ...

    @abstractmethod
    def _infer(self, request: Any, timeout: float | None, headers: Headers) -> InferResult:
        """One ModelInfer of a request message; its result, text outputs not decoded."""

    # Built on them ------------------------------------------------------------------------

    def state_pairs(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> dict[str, str]:
        """The model's state inputs and the outputs that carry them on: {"h0": "hn", ...}."""
        return self.model_metadata(model, version, timeout=timeout).state_pairs

    def infer(
        self,
        model: str,
        inputs: Inputs,
        outputs: Sequence[str] = (),
        parameters: Mapping[str, Parameter] | None = None,
        version: str = "",
        *,
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Run one request; returns output name -> array."""
        request = build_request(model, inputs, outputs, parameters, version)
        return self.infer_response_of(request, timeout=timeout).outputs

    def infer_response(
        self,
        model: str,
        inputs: Inputs,
        outputs: Sequence[str] = (),
        parameters: Mapping[str, Parameter] | None = None,
        version: str = "",
        *,
        timeout: float | None = None,
    ) -> InferResult:
        request = build_request(model, inputs, outputs, parameters, version)
        return self.infer_response_of(request, timeout=timeout)

    def infer_response_of(
        self, request: Any, *, timeout: float | None = None, headers: Headers = ()
    ) -> InferResult:
        """ModelInfer with a request message built already (see `build_request`), and
        `headers` (gRPC metadata, HTTP headers) sent with it besides the client's own."""
        return self.text_decoded(self._infer(request, timeout, headers), timeout)

    def text_decoded(self, result: InferResult, timeout: float | None = None) -> InferResult:
        """`result` with its text outputs as `str`, once the model's metadata said which."""
        key = self.text.unknown(result)
        if key is not None:
            self.text.learn(key, self.model_metadata(*key, timeout=timeout))
        return self.text.decoded(result)

    def step_sessions(
        self,
        model: str,
        ids: Sequence[int] | Sequence[str],
        inputs: Inputs,
        start: bool | Sequence[bool] = False,
        end: bool | Sequence[bool] = False,
        outputs: Sequence[str] = (),
        version: str = "",
        offsets: Sequence[int] | None = None,
        *,
        timeout: float | None = None,
    ) -> tuple[dict[str, np.ndarray], list[str]]:
        """One step of many sessions in one request: row i of every input is a step of
        session ids[i], starting it where start[i], ending it where end[i], beginning at
        time step offsets[i] when given. Returns the outputs (`sequence_offset` among them:
        each row's sequence's time steps after the request) and each row's error ("" for a
        row that stepped; a failed row's outputs are zeros or empty strings and its session
        is unchanged)."""
        inputs = {**inputs, **session_controls(ids, start, end, offsets)}
        result = self.infer_response(model, inputs, outputs, version=version, timeout=timeout)
        return row_errors(result)

    # The default models ------------------------------------------------------------------

    def infer_sine(
        self,
        values: Sequence[float] | np.ndarray,
        states: Mapping[str, np.ndarray] | None = None,
        model: str = "sine-lstm",
        *,
        timeout: float | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """y for x = `values`, and the final states keyed by the state inputs they feed
        (`h0`, `c0`), to pass to the next call."""
        pairs = self.state_pairs(model, timeout=timeout)
        inputs = {"x": sine_input(values), **(states or {})}
        out = self.infer(model, inputs, ["y", *pairs.values()], timeout=timeout)
        return sine_result(out, pairs)

    def tag(self, text: str, model: str = "tagger-gru", *, timeout: float | None = None) -> str:
        out = self.infer(model, {"text": [text]}, ["text_out"], timeout=timeout)
        return text_of(out["text_out"])

    def translate(
        self,
        text: str,
        model: str = "seq2seq-gru",
        max_output_length: int | None = None,
        *,
        timeout: float | None = None,
    ) -> str:
        parameters = translate_parameters(max_output_length)
        out = self.infer(model, {"text": [text]}, ["text_out"], parameters, timeout=timeout)
        return text_of(out["text_out"])


class AsyncClient(Options, ABC):
    """Client for asyncio, every method a coroutine; AsyncRnnClient and AsyncRestClient
    implement the abstract calls. Make it, and use it, inside one running event loop."""

    @abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # The protocol's calls ---------------------------------------------------------------

    @abstractmethod
    async def server_live(self, *, timeout: float | None = None) -> bool: ...

    @abstractmethod
    async def server_ready(self, *, timeout: float | None = None) -> bool: ...

    @abstractmethod
    async def model_ready(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> bool: ...

    @abstractmethod
    async def server_metadata(self, *, timeout: float | None = None) -> ServerMetadata: ...

    @abstractmethod
    async def model_metadata(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> ModelMetadata: ...

    @abstractmethod
    async def _infer(self, request: Any, timeout: float | None, headers: Headers) -> InferResult:
        """One ModelInfer of a request message; its result, text outputs not decoded."""

    # Built on them ------------------------------------------------------------------------

    async def state_pairs(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> dict[str, str]:
        return (await self.model_metadata(model, version, timeout=timeout)).state_pairs

    async def infer(
        self,
        model: str,
        inputs: Inputs,
        outputs: Sequence[str] = (),
        parameters: Mapping[str, Parameter] | None = None,
        version: str = "",
        *,
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        request = build_request(model, inputs, outputs, parameters, version)
        return (await self.infer_response_of(request, timeout=timeout)).outputs

    async def infer_response(
        self,
        model: str,
        inputs: Inputs,
        outputs: Sequence[str] = (),
        parameters: Mapping[str, Parameter] | None = None,
        version: str = "",
        *,
        timeout: float | None = None,
    ) -> InferResult:
        request = build_request(model, inputs, outputs, parameters, version)
        return await self.infer_response_of(request, timeout=timeout)

    async def infer_response_of(
        self, request: Any, *, timeout: float | None = None, headers: Headers = ()
    ) -> InferResult:
        return await self.text_decoded(await self._infer(request, timeout, headers), timeout)

    async def text_decoded(self, result: InferResult, timeout: float | None = None) -> InferResult:
        key = self.text.unknown(result)
        if key is not None:
            self.text.learn(key, await self.model_metadata(*key, timeout=timeout))
        return self.text.decoded(result)

    async def step_sessions(
        self,
        model: str,
        ids: Sequence[int] | Sequence[str],
        inputs: Inputs,
        start: bool | Sequence[bool] = False,
        end: bool | Sequence[bool] = False,
        outputs: Sequence[str] = (),
        version: str = "",
        offsets: Sequence[int] | None = None,
        *,
        timeout: float | None = None,
    ) -> tuple[dict[str, np.ndarray], list[str]]:
        inputs = {**inputs, **session_controls(ids, start, end, offsets)}
        result = await self.infer_response(model, inputs, outputs, version=version, timeout=timeout)
        return row_errors(result)

    # The default models ------------------------------------------------------------------

    async def infer_sine(
        self,
        values: Sequence[float] | np.ndarray,
        states: Mapping[str, np.ndarray] | None = None,
        model: str = "sine-lstm",
        *,
        timeout: float | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        pairs = await self.state_pairs(model, timeout=timeout)
        inputs = {"x": sine_input(values), **(states or {})}
        out = await self.infer(model, inputs, ["y", *pairs.values()], timeout=timeout)
        return sine_result(out, pairs)

    async def tag(
        self, text: str, model: str = "tagger-gru", *, timeout: float | None = None
    ) -> str:
        out = await self.infer(model, {"text": [text]}, ["text_out"], timeout=timeout)
        return text_of(out["text_out"])

    async def translate(
        self,
        text: str,
        model: str = "seq2seq-gru",
        max_output_length: int | None = None,
        *,
        timeout: float | None = None,
    ) -> str:
        parameters = translate_parameters(max_output_length)
        out = await self.infer(model, {"text": [text]}, ["text_out"], parameters, timeout=timeout)
        return text_of(out["text_out"])
