"""Step accounting: the time steps each session has consumed, and what a step's
`sequence_offset` (the steps its sequence consumed before it) makes of it.

A step that carries no offset is applied, as Triton's sequences always are. One that does is
    - applied when the offset equals the session's count;
    - answered again, and applied no more, when it is a retry of the session's last step:
      that step's offset, length and inputs (a digest of them and of the sequence flags).
      A continuing step gets the answer kept with the session (`replay`); the final step of
      an ended session, whose record keeps the state it started from, is computed again
      from that state (`rerun`: a streamed end is decoded after the session is freed, so
      there is no answer to keep within its turn);
    - refused otherwise, FAILED_PRECONDITION naming the server's count, which also rides
      in the error's details (`sequence_offset`) for the client to resynchronise.
A start carries offset 0 and is applied unless it is a retry of the session's first step
(the same inputs), or its sequence is live and has gone on past its first step: then it is
most likely an attempt at that first step that arrived late (its client gave up on it,
was answered by another attempt and went on), and beginning the sequence again would make
every later step of its client wrong. It is refused, FAILED_PRECONDITION naming the
server's count, and a client that does mean to begin the sequence again sends the start
with that count as its offset (the client library does so by itself): a start at the
server's count is applied. A start without an offset is always applied, as Triton's are.

A continuation of a session without state is refused, saying what became of it: unknown
(never started, or forgotten), ended by the client or expired (INVALID_ARGUMENT, or
FAILED_PRECONDITION for an offset step after an end), or lost to a server fault (ABORTED:
the request was right, the server lost what it needed; begin the sequence again).

Concurrent attempts. A store that other processes write too writes a step only if the
session still holds the count the step was applied on (state.Conflict): of two attempts at
one step (a retry that reached another process while the first still ran), one is written
and the other is refused (`refusal`), applied by none of it. A step that carries an offset
is told to retry (its retry is answered again); one without cannot tell its own earlier
attempt from another step, so it is refused ABORTED with the server's count, and the store
refuses the sequence's steps without an offset from then on, until one with an offset (or a
start) resynchronises it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np

from rnnserve.protocol import codec
from rnnserve.protocol.sequences import SEQUENCE_OFFSET
from rnnserve.service.errors import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    ServiceError,
    Unavailable,
)
from rnnserve.service.sessions.state import Answer, Conflict, Gone, Loaded, Progress, SessionKey
from rnnserve.service.types import Tensor

Kind = Literal["apply", "replay", "rerun", "fail"]


class RowStep(NamedTuple):
    """One step of one session: one row of a batch. A tuple: made for every row of every
    request, it costs a third of what a frozen dataclass does."""

    key: SessionKey
    start: bool
    end: bool
    offset: int | None = None  # sequence_offset, when the request carries it
    length: int = 0  # time steps the step consumes
    digest: bytes = b""  # of its inputs and flags, when it carries an offset


@dataclass(init=False, slots=True)
class Outcome:
    """What became of one row's step."""

    kind: Kind
    offset: int  # the session's time steps after the request (known ones, for failures)
    error: ServiceError | None
    answer: Answer | None  # a replay's kept answer (its state outputs left out)
    prior: int | None  # an applied step's: the count it was applied on (Progress.prior)

    # __init__ by hand: compiled, a dataclass's generated one runs as Python, at three times
    # the cost; made for every request.
    def __init__(
        self,
        kind: Kind = "apply",
        offset: int = 0,
        error: ServiceError | None = None,
        answer: Answer | None = None,
        prior: int | None = None,
    ) -> None:
        self.kind = kind
        self.offset = offset
        self.error = error
        self.answer = answer
        self.prior = prior

    def fail(self, error: ServiceError) -> None:
        self.kind, self.error = "fail", error


def judge(step: RowStep, found: Loaded) -> Outcome:
    """The outcome of a step given what its session's store held (`found`: loaded for every
    continuing step, and for a start that carries an offset)."""
    if isinstance(found, Progress) and _is_retry(step, found):
        if found.ended:
            return Outcome("rerun", found.offset)
        assert found.last is not None  # _is_retry checked it
        return Outcome("replay", found.offset, answer=found.last.answer)
    if step.start:
        if isinstance(found, Progress) and _is_late_start(step, found):
            return Outcome("fail", found.offset, _late_start(step, found))
        return Outcome("apply", step.length)
    if isinstance(found, (FailedPrecondition, Unavailable)):
        return Outcome("fail", error=found)
    if isinstance(found, Gone):
        return Outcome("fail", error=_gone(step.key, found))
    if found is None:
        return Outcome(
            "fail",
            error=InvalidArgument(
                f"{step.key.describe()} is not active: the server knows no such sequence "
                "(never started, or it ended or expired longer ago than the server "
                "remembers); a sequence must begin with sequence_start=true"
            ),
        )
    if found.ended:
        return Outcome("fail", found.offset, _ended(step, found))
    if step.offset is None or step.offset == found.offset:
        return Outcome("apply", found.offset + step.length, prior=found.offset)
    return Outcome("fail", found.offset, _out_of_step(step, found))


def refusal(step: RowStep, conflict: Conflict) -> ServiceError:
    """The error of a step whose write the store refused (see Conflict): nothing of it was
    applied."""
    key = step.key.describe()
    if conflict.offset is None or step.offset is not None:
        # A retry learns what became of it: answered again, applied, or why not.
        return Unavailable(
            f"{key} changed while this step ran (another attempt at it, or another step, "
            "was applied first): this one was not applied; retry it"
            + ("" if step.offset is None else f" with its {SEQUENCE_OFFSET}")
        )
    if conflict.unsure:
        why = (
            "the outcome of an earlier step may be unknown to its client (the state store "
            "did not answer its write, or another step was applied while it ran), so steps "
            "without sequence_offset are refused"
        )
    else:
        why = (
            "another step (maybe another attempt at this one) was applied while this one "
            "ran: this one was not applied, and steps without sequence_offset are refused"
        )
    return Aborted(
        f"{key}: {why} until one with it resynchronises the sequence; the server has "
        f"applied {conflict.offset} time steps: send the step that begins there with "
        f"{SEQUENCE_OFFSET}={conflict.offset}, or start the sequence again",
        {SEQUENCE_OFFSET: conflict.offset},
    )


def _is_retry(step: RowStep, found: Progress) -> bool:
    """Whether `step` is another attempt at the session's last step. A start is one
    whatever its offset (0, or the count it began the sequence again at): its digest,
    which covers its flags, equals only that of a start, the first step of what is held."""
    last = found.last
    return (
        step.offset is not None
        and last is not None
        and (step.start or step.offset == found.offset - last.length)
        and step.length == last.length
        and step.digest == last.digest
    )


def _is_late_start(step: RowStep, found: Progress) -> bool:
    """Whether `step`, a start that is not a retry, carries an offset other than the count
    of a live session that has gone on past its first step (its last step, kept for a
    retry, did not begin at 0)."""
    return (
        step.offset is not None
        and step.offset != found.offset
        and not found.ended
        and found.last is not None
        and found.offset > found.last.length
    )


def _late_start(step: RowStep, found: Progress) -> ServiceError:
    return FailedPrecondition(
        f"{SEQUENCE_OFFSET} {step.offset} does not match {step.key.describe()}: it is active "
        f"and has gone on past its first step, to {found.offset} time steps, so this start "
        "was not applied (it may be an attempt at its first step that arrived late); to "
        f"begin the sequence again, send the start with {SEQUENCE_OFFSET}={found.offset}",
        {SEQUENCE_OFFSET: found.offset},
    )


def _gone(key: SessionKey, gone: Gone) -> ServiceError:
    if gone.why == "lost":
        return Aborted(
            f"state of {key.describe()} was lost: {gone.reason}; start it again with "
            "sequence_start=true"
        )
    return InvalidArgument(
        f"{key.describe()} is not active: {gone.reason}; a sequence must begin with "
        "sequence_start=true"
    )


def _ended(step: RowStep, found: Progress) -> ServiceError:
    if step.offset is None:
        return InvalidArgument(
            f"{step.key.describe()} is not active: it ended (sequence_end) after "
            f"{found.offset} time steps; a sequence must begin with sequence_start=true"
        )
    return FailedPrecondition(
        f"{SEQUENCE_OFFSET} {step.offset} does not match {step.key.describe()}: it ended "
        f"after {found.offset} time steps, and this is not a retry of its final step",
        {SEQUENCE_OFFSET: found.offset},
    )


def _out_of_step(step: RowStep, found: Progress) -> ServiceError:
    last = found.last
    if last is not None and step.offset == found.offset - last.length:
        why = (
            f"a step of {last.length} time steps was applied at that offset with other "
            f"inputs or flags than this one of {step.length}"
        )
    else:
        why = f"the server has applied {found.offset} time steps"
    return FailedPrecondition(
        f"{SEQUENCE_OFFSET} {step.offset} does not match {step.key.describe()}: {why}; "
        f"send the step that begins at time step {found.offset}",
        {SEQUENCE_OFFSET: found.offset},
    )


def answer_of(outputs: Answer, row: int) -> Answer:
    """A row's answer to keep: its row of each output (not of the states; batch axis first),
    copied."""
    return {name: array[row : row + 1].copy() for name, array in outputs.items()}


# Digests: a retry must be the same step, not merely one of the same length.


def request_digest(inputs: Sequence[Tensor], start: bool, end: bool) -> bytes:
    """The digest of a one-sequence request's inputs and flags."""
    return _digest(((t.name, t.datatype, t.data) for t in inputs), start, end)


def row_digest(
    inputs: Sequence[Tensor], batch_axes: Mapping[str, int], row: int, start: bool, end: bool
) -> bytes:
    """The digest of one row of a multi-session request: its row of each input (a batch of
    one on each input's batch axis: 0 unless `batch_axes` says otherwise) and its flags."""
    parts = (
        (t.name, t.datatype, np.take(t.data, [row], batch_axes.get(t.name, 0))) for t in inputs
    )
    return _digest(parts, start, end)


def _digest(parts: Iterable[tuple[str, str, np.ndarray]], start: bool, end: bool) -> bytes:
    digest = hashlib.blake2b(bytes([start, end]), digest_size=16)
    for name, datatype, data in sorted(parts, key=lambda part: part[0]):
        digest.update(f"{name}\0{datatype}\0{data.shape}\0".encode())
        digest.update(codec.raw_of(datatype, data))
    return digest.digest()
