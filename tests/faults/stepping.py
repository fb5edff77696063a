"""Clients that step sequences as users' own clients do, doing exactly what each answer's
code and message say, and a tally of what became of every sequence.

`Steppers` runs client threads, each stepping sequences of sine-lstm chunk after chunk over
plain ModelInfer calls (no client library), each attempt on the next of its connections (two
of their own: with workers, a retry may reach another worker). Without offsets (plain
tritonclient, curl) a client sends a step again only after UNAVAILABLE, whose message says
that nothing was applied and it may be retried; any other failure (its own deadline
included: it cannot know whether the step was applied) ends the sequence, and it starts
another. With offsets, it also sends the step again, the same, after its own deadline,
CANCELLED and ABORTED with `sequence_outcome` unknown. Every sequence completed is checked
against its reference, the whole sequence answered at once; every refusal is kept, by code
and by the reason its message gives.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
import numpy as np
from faults_helpers import CHUNK, LENGTH, MODEL, TOLERANCE, ClientThreads

from rnnserve.client.client import RnnClient
from rnnserve.client.errors import InferenceError
from rnnserve.client.wire import build_request
from rnnserve.protocol import rpc
from rnnserve.protocol.sequences import SEQUENCE_OFFSET, SEQUENCE_OUTCOME, UNKNOWN_OUTCOME

ATTEMPTS = 80  # tries of one step, short between tries: outlasts a Redis pause or restart
# What a refusal's message says became of the sequence (the first phrase found names it).
REASONS = (
    ("did not confirm this step's write", "outcome unknown"),
    ("did not have a replica confirm", "outcome unknown: no replica confirmed"),
    ("outcome of an earlier step may be unknown", "unsure: an earlier outcome unknown"),
    ("was applied while this one ran", "another attempt applied first"),
    ("changed while this step ran", "changed while it ran"),
    ("server process holding it stopped", "lost: its process stopped"),
    ("lost its data", "lost: Redis lost its data"),
    ("lost", "lost"),
    ("expired", "expired"),
    ("it ended", "ended"),
    ("knows no such sequence", "unknown sequence"),
    ("is unreachable", "store unreachable"),
    ("does not match", "out of step"),
)


def reason(error: InferenceError) -> str:
    if error.code == "DEADLINE_EXCEEDED":
        return "the client's own deadline"
    return next((name for phrase, name in REASONS if phrase in error.message), error.message)


@dataclass
class Tally:
    """What became of the sequences of all clients."""

    completed: int = 0  # ended, every answer equal to the reference
    wrong: list[str] = field(default_factory=list)  # sequences with an answer unequal to it
    refused: Counter[str] = field(default_factory=Counter)  # sequences refused, by code
    reasons: Counter[str] = field(default_factory=Counter)  # and by reason
    said: dict[str, str] = field(default_factory=dict)  # the first message of each reason
    retries: int = 0
    steps: int = 0

    def line(self, scenario: str) -> str:
        return (
            f"{scenario}: {self.completed} completed, {len(self.wrong)} wrong, "
            f"{self.steps} steps, {self.retries} retries, refused by code "
            f"{dict(self.refused)}, reasons {dict(self.reasons)}"
            + "".join(f"\n  {name}: {message}" for name, message in self.said.items())
        )


class Steppers(ClientThreads):
    """`clients` threads stepping sequences over plain ModelInfer calls."""

    def __init__(
        self,
        address: str,
        clients: int,
        offsets: bool,
        timeout_s: float = 10.0,
        seed: int = 0,
    ) -> None:
        self.offsets = offsets
        self.timeout_s = timeout_s
        self.tally = Tally()
        self._lock = threading.Lock()
        super().__init__(address, clients, seed)

    def wait_for_steps(self, steps: int, timeout_s: float = 120) -> None:
        target = self.tally.steps + steps
        deadline = time.monotonic() + timeout_s
        while self.tally.steps < target:
            assert time.monotonic() < deadline, f"clients stalled: {self.tally.line('')}"
            time.sleep(0.02)

    def _run(self, index: int) -> None:
        connections = [self._connect() for _ in range(2)]
        try:
            run = 0
            while not self._stop.is_set():
                run += 1
                self._sequence(connections, f"client-{index}-{run}", index)
        finally:
            for connection in connections:
                connection.close()

    def _connect(self) -> RnnClient:
        """A client on a connection of its own (channels of one process share connections
        by default, and all would land on one worker)."""
        client = RnnClient(self.address, timeout_s=self.timeout_s)
        options = [("grpc.use_local_subchannel_pool", 1)]
        client.stub = rpc.Stub(grpc.insecure_channel(self.address, options=options))
        return client

    def _sequence(self, connections: list[RnnClient], sequence_id: str, index: int) -> None:
        x, whole = self.xs[index], self.wholes[index]
        wrong = []
        offset = 0
        for begin in range(0, LENGTH, CHUNK):
            if self._stop.is_set():
                return
            parameters: dict[str, object] = {
                "sequence_id": sequence_id,
                "sequence_start": begin == 0,
                "sequence_end": begin + CHUNK == LENGTH,
            }
            if self.offsets:
                parameters[SEQUENCE_OFFSET] = offset
            request = build_request(MODEL, {"x": x[None, begin : begin + CHUNK, None]}, ["y"],
                                    parameters)  # type: ignore[arg-type]  # fmt: skip
            try:
                y = self._step(connections, request)
            except InferenceError as error:
                with self._lock:
                    self.tally.refused[error.code] += 1
                    self.tally.reasons[reason(error)] += 1
                    self.tally.said.setdefault(reason(error), f"{error.code}: {error.message}")
                return
            offset += CHUNK
            with self._lock:
                self.tally.steps += 1
            expected = whole[begin : begin + CHUNK]
            if not np.allclose(y[0, :, 0], expected, rtol=0, atol=TOLERANCE):
                wrong.append(f"at {begin}: {y[0, :, 0]} != {expected}")
        with self._lock:
            if wrong:
                self.tally.wrong.append(f"{sequence_id} {wrong[0]}")
            else:
                self.tally.completed += 1

    def _step(self, connections: list[RnnClient], request: object) -> np.ndarray:
        """The step's answer, sent again while the answers say it may be."""
        for attempt in range(ATTEMPTS):
            client = connections[attempt % len(connections)]
            try:
                timeout = min(self.timeout_s * 2**attempt, 10.0)  # short first: overlaps
                return client.infer_response_of(request, timeout=timeout).outputs["y"]
            except InferenceError as error:
                if attempt + 1 == ATTEMPTS or not self._again(error):
                    raise
                with self._lock:
                    self.tally.retries += 1
                time.sleep(min(0.02 * 2**attempt, 0.25))
        raise AssertionError("unreachable")

    def _again(self, error: InferenceError) -> bool:
        if error.code == "UNAVAILABLE":
            return True
        if not self.offsets:
            return False
        return error.code in ("DEADLINE_EXCEEDED", "CANCELLED") or (
            error.details.get(SEQUENCE_OUTCOME) == UNKNOWN_OUTCOME
        )
