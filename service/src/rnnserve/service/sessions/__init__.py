"""Stateful sequences: state stores (memory, Redis, owned), the session manager that carries
state between the requests of a sequence, and the batcher that runs steps of different
sessions together."""

from rnnserve.service.sessions.accounting import Outcome, RowStep
from rnnserve.service.sessions.batcher import Batcher, Runner, Tensors
from rnnserve.service.sessions.control import SessionRows, split_control
from rnnserve.service.sessions.manager import SessionManager
from rnnserve.service.sessions.parameters import (
    SEQUENCE_PARAMETERS,
    SequenceParameters,
    parse_sequence_parameters,
)
from rnnserve.service.sessions.state import Layout, SessionKey
from rnnserve.service.sessions.store import StateStore, open_store

__all__ = [
    "SEQUENCE_PARAMETERS",
    "Batcher",
    "Layout",
    "Outcome",
    "RowStep",
    "Runner",
    "SequenceParameters",
    "SessionKey",
    "SessionManager",
    "SessionRows",
    "StateStore",
    "Tensors",
    "open_store",
    "parse_sequence_parameters",
    "split_control",
]
