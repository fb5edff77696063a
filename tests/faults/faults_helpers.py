"""What the fault tests share: clients stepping sequences through a fault and checking every
answer (a redis-server the test may stop, kill and restart: redis_helpers.RedisServer).

`Sequences` runs client threads, each on a connection of its own (so that with workers the
kernel spreads them over the workers), each stepping sequences of sine-lstm through the
client library's SequenceSession (every step with its offset, retried after UNAVAILABLE),
chunk after chunk, and comparing every answer with its reference: the same whole sequence
answered at once. A sequence refused ABORTED ("state ... was lost") starts over, as its
client is told to; any other refusal is recorded for the test to judge.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Self

import grpc
import numpy as np

from rnnserve.client.client import RnnClient
from rnnserve.client.errors import InferenceError
from rnnserve.client.retry import RetryPolicy
from rnnserve.client.sequence import SequenceSession
from rnnserve.protocol import rpc

MODEL = "sine-lstm"
LENGTH = 60  # time steps of every sequence
CHUNK = 3  # time steps per request
# Retries long enough to outlast a worker's restart or a Redis pause, short between tries.
RETRY = RetryPolicy(max_attempts=60, initial_backoff_s=0.02, max_backoff_s=0.25)
TOLERANCE = 1e-5  # pieces against the whole: the same ORT kernels, state carried exactly


def own_connection(client: RnnClient, address: str) -> RnnClient:
    """`client` on a connection of its own: channels of one process share connections by
    default, and all would land on one worker."""
    client.close()  # the channel it made, unused
    client.channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    client.stub = rpc.Stub(client.channel)
    return client


@dataclass
class Client:
    """One client's record."""

    index: int
    answered: list[float] = field(default_factory=list)  # when each step was answered
    sequences: int = 0  # sequences completed, each equal to its reference
    lost: list[str] = field(default_factory=list)  # ABORTED messages
    refused: list[InferenceError] = field(default_factory=list)  # any other refusal
    wrong: list[str] = field(default_factory=list)  # answers unequal to the reference
    retries: int = 0
    active: bool = False  # a sequence started and not ended when it stopped


def references(address: str, count: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """`count` random inputs of LENGTH time steps, and each one's output answered at once."""
    rng = np.random.default_rng(seed)
    xs = [rng.normal(0, 1, LENGTH).astype(np.float32) for _ in range(count)]
    with RnnClient(address) as client:
        wholes = [client.infer(MODEL, {"x": x[None, :, None]}, ["y"])["y"][0, :, 0] for x in xs]
    return xs, wholes


def step_checked(
    session: SequenceSession, x: np.ndarray, whole: np.ndarray, begin: int
) -> str | None:
    """Steps the chunk of `x` at `begin`; what was wrong with the answer, or None."""
    end = begin + CHUNK == LENGTH
    y = session.step({"x": x[None, begin : begin + CHUNK, None]}, ["y"], end=end)["y"]
    expected = whole[begin : begin + CHUNK]
    if np.allclose(y[0, :, 0], expected, rtol=0, atol=TOLERANCE):
        return None
    return f"{session.sequence_id} at {begin}: {y[0, :, 0]} != {expected}"


class HeldSequences:
    """`count` sequences, each on a connection of its own, started with one chunk and then
    left idle mid-sequence until `step_on()`. A fault that loses states must lose theirs:
    a stepping client (`Sequences`) may meet the fault with a start or an end in flight, which
    any worker answers (a start begins again, an end's record is in Redis), and a worker that
    served only a few such clients can die losing none of them."""

    def __init__(self, address: str, count: int, streaming: bool = False, seed: int = 1) -> None:
        self.xs, self.wholes = references(address, count, seed)
        self._sessions = [
            SequenceSession(
                own_connection(RnnClient(address, timeout_s=10), address),
                MODEL,
                f"held-{index}",
                streaming,
                retry=RETRY,
            )
            for index in range(count)
        ]
        self.wrong: list[str] = []  # what was wrong with an answer
        for index in range(count):
            self._step(index, 0)

    def step_on(self) -> tuple[int, list[str]]:
        """Each sequence's second chunk: how many continued (their answers checked into
        `wrong`), and the messages of those refused ABORTED (lost)."""
        continued, lost = 0, []
        for index in range(len(self._sessions)):
            try:
                self._step(index, CHUNK)
                continued += 1
            except InferenceError as error:
                assert error.code == "ABORTED", error
                lost.append(error.message)
        return continued, lost

    def close(self) -> None:
        for session in self._sessions:
            session.close()
            session.client.close()

    def _step(self, index: int, begin: int) -> None:
        wrong = step_checked(self._sessions[index], self.xs[index], self.wholes[index], begin)
        if wrong is not None:
            self.wrong.append(wrong)


class ClientThreads:
    """`clients` threads stepping sequences of sine-lstm against `address` until `stop()`,
    each on its own input (`xs`), checked against that whole sequence answered at once
    (`wholes`). A subclass steps them in `_run(index)` while `_stop` is not set."""

    def __init__(self, address: str, clients: int, seed: int) -> None:
        self.address = address
        self.xs, self.wholes = references(address, clients, seed)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(index,), daemon=True)
            for index in range(clients)
        ]

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)
            assert not thread.is_alive(), "a client never stopped"

    def _run(self, index: int) -> None:
        raise NotImplementedError


class Sequences(ClientThreads):
    """`clients` threads stepping sequences through the client library's SequenceSession."""

    def __init__(self, address: str, clients: int, streaming: bool = False, seed: int = 0) -> None:
        self.streaming = streaming
        self.clients = [Client(index) for index in range(clients)]
        super().__init__(address, clients, seed)

    def wait_for_steps(self, steps: int, timeout_s: float = 120) -> None:
        """Until every client has had `steps` more steps answered."""
        targets = [len(client.answered) + steps for client in self.clients]
        deadline = time.monotonic() + timeout_s
        while any(len(c.answered) < t for c, t in zip(self.clients, targets, strict=True)):
            assert time.monotonic() < deadline, f"clients stalled: {self.summary()}"
            assert all(thread.is_alive() for thread in self._threads), self.summary()
            time.sleep(0.02)

    def served_again(self, since: float) -> float:
        """Seconds from `since` until every client had an answer again (the longest wait
        of any client), once all have one."""
        return max(
            min(when for when in client.answered if when > since) - since for client in self.clients
        )

    def summary(self) -> str:
        return ", ".join(
            f"client {c.index}: {len(c.answered)} answered, {c.sequences} sequences, "
            f"{len(c.lost)} lost, {[e.code for e in c.refused]} refused, {c.retries} retries"
            for c in self.clients
        )

    @property
    def lost(self) -> list[str]:
        return [message for client in self.clients for message in client.lost]

    @property
    def refused(self) -> list[InferenceError]:
        return [error for client in self.clients for error in client.refused]

    @property
    def wrong(self) -> list[str]:
        return [message for client in self.clients for message in client.wrong]

    @property
    def active(self) -> int:
        return sum(client.active for client in self.clients)

    def _run(self, index: int) -> None:
        record, x, whole = self.clients[index], self.xs[index], self.wholes[index]
        with own_connection(RnnClient(self.address, timeout_s=10), self.address) as client:
            run = 0
            while not self._stop.is_set():
                run += 1
                sequence_id = f"client-{record.index}-{run}"
                with SequenceSession(
                    client, MODEL, sequence_id, self.streaming, retry=RETRY
                ) as session:
                    try:
                        self._sequence(session, record, x, whole)
                    except InferenceError as error:
                        record.active = False
                        if error.code == "ABORTED":
                            record.lost.append(error.message)
                        else:
                            record.refused.append(error)
                            time.sleep(0.1)  # recorded for the test: do not flood
                    record.retries += session.retries

    def _sequence(
        self, session: SequenceSession, record: Client, x: np.ndarray, whole: np.ndarray
    ) -> None:
        for begin in range(0, LENGTH, CHUNK):
            if self._stop.is_set():
                return  # stops mid-sequence: the sequence stays active
            wrong = step_checked(session, x, whole, begin)
            record.answered.append(time.monotonic())
            record.active = begin + CHUNK < LENGTH
            if wrong is not None:
                record.wrong.append(wrong)
        record.sequences += 1
