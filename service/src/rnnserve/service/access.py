"""What every front end records of each request it answers, alike for every protocol: the
request metrics, the in-flight gauge, the access-log line and the request id.

    with recorder.call("ModelInfer", model, version, request_id) as call:
        ...                      # answer; on failure set call.code before raising
        call.sequence_id = ...   # what the access line should say

Health probes (ServerLive, ServerReady and their REST routes) are written to the access
log but kept out of the metrics: orchestrators call them every few seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType

from rnnserve.service import metrics
from rnnserve.service.logs import ACCESS, FIELDS, REQUEST_ID
from rnnserve.service.types import ANONYMOUS, Parameter

REQUEST_ID_HEADER = "x-request-id"
# The RPCs whose latency rnnserve_request_duration_seconds tells.
INFERENCE_RPCS = frozenset({"ModelInfer", "ModelStreamInfer"})
_PLAIN = re.compile(r"[\w.:/@+-]*")

# (model, version) as a request names them -> the labels its metrics carry.
Labels = Callable[[str, str], tuple[str, str]]


def request_id_of(request_id: str, headers: Mapping[str, str]) -> str:
    """A request's id: its protocol `id` field, else its `x-request-id` header."""
    return request_id or headers.get(REQUEST_ID_HEADER, "")


def sequence_id_of(parameters: Mapping[str, Parameter]) -> str:
    """The sequence a request steps, for its access line ("" for none)."""
    sequence_id = parameters.get("sequence_id", "")
    return "" if sequence_id in (0, "") else str(sequence_id)


@dataclass(init=False, slots=True)
class Call:
    """One request as its front end answers it."""

    rpc: str
    model: str  # as the request named it
    version: str  # as the request named it; the labels resolve it
    request_id: str
    labels: tuple[str, str]
    sequence_id: str
    principal: str  # as the front end authenticated it (service/auth.py)
    code: str

    # __init__ by hand: compiled, a dataclass's generated one runs as Python, at three times
    # the cost; made for every request.
    def __init__(
        self,
        rpc: str,
        model: str,
        version: str,
        request_id: str,
        labels: tuple[str, str],
        sequence_id: str = "",
        principal: str = ANONYMOUS,
        code: str = "OK",
    ) -> None:
        self.rpc = rpc
        self.model = model
        self.version = version
        self.request_id = request_id
        self.labels = labels
        self.sequence_id = sequence_id
        self.principal = principal
        self.code = code


class Recorder:
    """A front end's recorder: `protocol` is "grpc" or "http"; `labels` resolves a request's
    model and version for its metrics (DataPlane.labels)."""

    def __init__(self, protocol: str, labels: Labels) -> None:
        self.protocol = protocol
        self._labels = labels
        # The metrics' children by label values, looked up once (prometheus_client's
        # labels() costs a microsecond or two per call) and kept as tallies, written at
        # scrape time (metrics.Tallies). The labels are bounded (above).
        self._in_flight: dict[tuple[str, str], metrics.Tally] = {}
        self._counted: dict[tuple[str, ...], tuple[metrics.Tally, metrics.Spread | None]] = {}

    def call(
        self, rpc: str, model: str = "", version: str = "", request_id: str = "",
        *, counted: bool = True,
    ) -> Recording:  # fmt: skip
        """Times one request and records it when it is answered (`counted` false: only in
        the access log). A cancelled request is recorded CANCELLED."""
        REQUEST_ID.set(request_id)
        call = Call(rpc, model, version, request_id, self._labels(model, version))
        return Recording(self, call, self._in_flight_of(call.labels) if counted else None)

    def _in_flight_of(self, labels: tuple[str, str]) -> metrics.Tally:
        gauge = self._in_flight.get(labels)
        if gauge is None:
            child = metrics.REQUESTS_IN_FLIGHT.labels(*labels)
            gauge = self._in_flight[labels] = metrics.TALLIES.counter(child)
        return gauge

    def record(self, call: Call, seconds: float, *, counted: bool) -> None:
        """An answered request's metrics (when `counted`) and access line."""
        if counted:
            self._count(call, seconds)
        if ACCESS.isEnabledFor(logging.INFO):
            self._log(call, seconds)

    def _count(self, call: Call, seconds: float) -> None:
        key = (*call.labels, call.rpc, call.code)
        children = self._counted.get(key)
        if children is None:
            labels = (*key, self.protocol)
            timed = call.rpc in INFERENCE_RPCS
            children = self._counted[key] = (
                metrics.TALLIES.counter(metrics.REQUESTS.labels(*labels)),
                metrics.TALLIES.histogram(metrics.REQUEST_DURATION.labels(*labels))
                if timed
                else None,
            )
        requests, latency = children
        requests.value += 1
        if latency is not None:
            latency.observe(seconds)

    def _log(self, call: Call, seconds: float) -> None:
        fields = {
            "protocol": self.protocol,
            "rpc": call.rpc,
            "model": call.model,
            "version": call.labels[1] or call.version,
            "code": call.code,
            "duration_ms": round(seconds * 1000, 3),
            "request_id": call.request_id,
            "sequence_id": call.sequence_id,
            "principal": call.principal,
        }
        line = " ".join(f"{key}={_text(value)}" for key, value in fields.items())
        ACCESS.info(line, extra={FIELDS: fields})


class Recording:
    """One request's record, as a context manager (a class, not a generator: it is entered
    on every request): the in-flight gauge while it runs, then its count, latency and access
    line."""

    __slots__ = ("_call", "_in_flight", "_recorder", "_start")

    def __init__(self, recorder: Recorder, call: Call, in_flight: metrics.Tally | None) -> None:
        self._recorder = recorder
        self._call = call
        self._in_flight = in_flight

    def __enter__(self) -> Call:
        if self._in_flight is not None:
            self._in_flight.value += 1
        metrics.TALLIES.in_flight += 1
        self._start = time.perf_counter()
        return self._call

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        now = time.perf_counter()
        call = self._call
        if isinstance(error, asyncio.CancelledError):
            call.code = "CANCELLED"
        if self._in_flight is not None:
            self._in_flight.value -= 1
        self._recorder.record(call, now - self._start, counted=self._in_flight is not None)
        metrics.TALLIES.in_flight -= 1
        metrics.TALLIES.answered(now)


def _text(value: object) -> str:
    """A value as one token of a text line: quoted when it could break the line apart
    (names and ids come from clients)."""
    text = str(value)
    return text if text and _PLAIN.fullmatch(text) else json.dumps(text)
