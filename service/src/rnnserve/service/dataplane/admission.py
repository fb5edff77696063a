"""Admission: whether a request may run, on which model version, and by which path.

A request's sequence parameters are parsed once, here, and travel in its `Admitted` from
then on. A continuation of a sequence that names no version runs on the version holding
its state (versions come and go while sessions run), so admission may ask the state store
once. Every refusal is a ServiceError whose message says what the client should send
instead: a request parameter no part of the server reads among them (a misspelt
`sequense_id` would otherwise turn a sequence's step into a stateless run the client never
hears of), unless `--allow-unknown-parameters`.
"""

from __future__ import annotations

import difflib
from collections.abc import AsyncIterator
from typing import Protocol

from rnnserve.model.streaming import why_not_streamable
from rnnserve.service.dataplane.admitted import Admitted
from rnnserve.service.dataplane.compute import Compute
from rnnserve.service.dataplane.rows import RowsPath
from rnnserve.service.dataplane.sequence import SequencePath
from rnnserve.service.dataplane.stateless import StatelessPath
from rnnserve.service.dataplane.timer import RequestTimer
from rnnserve.service.errors import FailedPrecondition, InvalidArgument
from rnnserve.service.repository import LoadedVersion, NotLoaded, Repository
from rnnserve.service.sessions import (
    SEQUENCE_PARAMETERS,
    SequenceParameters,
    SessionKey,
    SessionManager,
    SessionRows,
    parse_sequence_parameters,
    split_control,
)
from rnnserve.service.settings import Settings
from rnnserve.service.tasks.base import TASKS
from rnnserve.service.types import InferRequest, InferResponse

# Request parameters of the Open Inference Protocol's Triton clients that this server
# accepts and ignores, so that those clients work unchanged: tritonclient's infer() and
# async_infer() (gRPC and HTTP) send `priority` and `timeout` whenever set (we have no
# priority queue, and a deadline rides on the call), its stream_infer()
# `triton_enable_empty_final_response` (our last response is never empty), and its HTTP
# client `binary_data_output` (read, then removed, by the REST converter; ignored over gRPC,
# as Triton does); perf_analyzer sends the same through those clients. Triton's
# `sequence_id` (int64, uint64 or string), `sequence_start` and `sequence_end` are read
# (sessions/parameters.py).
TRITON_PARAMETERS = frozenset(
    {"priority", "timeout", "triton_enable_empty_final_response", "binary_data_output"}
)


class Path(Protocol):
    """How an admitted request is answered: whole, or response by response."""

    async def answer(self, admitted: Admitted, timer: RequestTimer) -> InferResponse: ...

    def stream(self, admitted: Admitted, timer: RequestTimer) -> AsyncIterator[InferResponse]: ...


class Admission:
    def __init__(
        self,
        settings: Settings,
        repository: Repository,
        sessions: SessionManager,
        compute: Compute,
    ) -> None:
        self._allow_unknown_parameters = settings.allow_unknown_parameters
        # What some task reads: a name no part of the server reads is refused before the
        # sequence parameters are parsed (a misspelt `sequense_id` is named as such, not as
        # a `sequence_start` without an id).
        self._read_by_tasks = frozenset().union(
            *(task.request_parameters for task in TASKS.values())
        )
        self._repository = repository
        self._sessions = sessions
        self._compute = compute
        self._stateless = StatelessPath(compute)
        self._sequence = SequencePath(sessions, compute)
        self._rows = RowsPath(sessions, compute)

    async def admit(self, request: InferRequest) -> tuple[Admitted, Path]:
        """The request admitted (its model version, its sequence or session rows, the
        request as its task sees it: without control tensors) and the path that answers
        it; or why it may not run."""
        check = not self._allow_unknown_parameters
        if check:
            _check_parameters(request, self._read_by_tasks, None)
        sequence = parse_sequence_parameters(request.parameters)
        # Control tensors and sequence parameters exclude each other (split_control refuses
        # both): a request with session rows has no sequence of its own.
        rows, request = split_control(request)
        model = await self._version_for(request, sequence)
        if check:  # one another task reads
            _check_parameters(request, model.task.request_parameters, model.name)
        _check_sessions(model, sequence, rows)
        admitted = Admitted(model, request, sequence, rows, self._compute.threads_for(request))
        if rows is not None:
            return admitted, self._rows
        if sequence.in_session:
            return admitted, self._sequence
        return admitted, self._stateless

    async def _version_for(
        self, request: InferRequest, sequence: SequenceParameters
    ) -> LoadedVersion:
        """The version a request runs on: the one it names (the newest for none), but a
        continuation of a sequence that names none continues on the version holding its
        state, and one continuing on a version unloaded since is refused: its state went
        with it."""
        name, version = request.model_name, request.model_version
        if not sequence.in_session or sequence.start:
            return self._repository.get(name, version)
        version = version or await self._version_holding(request, sequence)
        entry = self._repository.entry(name, version) if version else None
        if isinstance(entry, NotLoaded):
            raise FailedPrecondition(
                f"sequence {sequence.sequence_id!r} of model '{name}' continues on version "
                f"{version}, which is not loaded any more ({entry.reason}): its state went "
                "with it; begin the sequence again with sequence_start=true"
            )
        return self._repository.get(name, version)

    async def _version_holding(self, request: InferRequest, sequence: SequenceParameters) -> str:
        """The version whose sessions hold the request's sequence (for its principal): the
        only one that may, or the one that does, "" (the newest) when none does. One store
        call, only for models with several versions loaded or unloaded."""
        candidates = self._repository.session_versions(request.model_name)
        if len(candidates) < 2:
            return candidates[0] if candidates else ""
        keys = [
            SessionKey(request.principal, request.model_name, version, sequence.sequence_id)
            for version in candidates
        ]
        found = await self._sessions.store.contains(keys)
        return next((key.version for key, held in zip(keys, found, strict=True) if held), "")


def _check_parameters(
    request: InferRequest, task_parameters: frozenset[str], model: str | None
) -> None:
    """Every request parameter is a sequence parameter, one of `task_parameters` (those of
    the model's task; of every task while the model is not known yet: `model` None) or
    one of Triton's the server ignores; INVALID_ARGUMENT naming the first that is not, and
    the known name nearest to it. Nothing is built unless one is refused."""
    for name in request.parameters:
        if name in SEQUENCE_PARAMETERS or name in task_parameters or name in TRITON_PARAMETERS:
            continue
        reads = sorted(SEQUENCE_PARAMETERS | task_parameters)
        nearest = difflib.get_close_matches(name, [*reads, *TRITON_PARAMETERS], n=1)
        hint = f" (did you mean {nearest[0]!r}?)" if nearest else ""
        reader = "the server" if model is None else f"model '{model}'"
        raise InvalidArgument(
            f"unknown request parameter {name!r}{hint}; {reader} reads {', '.join(reads)} "
            f"(and ignores Triton's {', '.join(sorted(TRITON_PARAMETERS))}); a server "
            "started with --allow-unknown-parameters accepts others"
        )


def _check_sessions(
    model: LoadedVersion, sequence: SequenceParameters, rows: SessionRows | None
) -> None:
    """A request of a session (a sequence, or session rows) needs a model that streams,
    and session rows one that answers each step at once."""
    if (sequence.in_session or rows is not None) and not model.spec.streamable:
        raise FailedPrecondition(f"model '{model.name}' {why_not_streamable(model.spec)}")
    if rows is not None and not model.takes_session_rows:
        raise FailedPrecondition(
            f"model '{model.name}' ({model.spec.task}) takes no multi-session requests "
            "(control inputs 'sequence_id', 'sequence_start', 'sequence_end'): it answers "
            "a session only after its last piece; send each session's pieces in requests "
            "of their own, with sequence parameters"
        )
