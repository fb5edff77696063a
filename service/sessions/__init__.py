"""Stateful sequences: state stores (memory, Redis, owned), the session manager that carries
state between the requests of a sequence, and the batcher that runs steps of different
sessions together."""

from service.sessions.batcher import Batcher, Runner, Tensors
from service.sessions.control import SessionRows, split_control
from service.sessions.manager import RowStep, SessionManager
from service.sessions.parameters import SequenceParameters, parse_sequence_parameters
from service.sessions.state import Layout, SessionKey, State, zero_state
from service.sessions.store import StateStore, open_store

__all__ = [
    "Batcher",
    "Layout",
    "RowStep",
    "Runner",
    "SequenceParameters",
    "SessionKey",
    "SessionManager",
    "SessionRows",
    "State",
    "StateStore",
    "Tensors",
    "open_store",
    "parse_sequence_parameters",
    "split_control",
    "zero_state",
]
