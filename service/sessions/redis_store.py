"""States in Redis, so that several server processes serve the same sessions and a
session outlives the process that started it.

Each session is one Redis string holding a small JSON header (principal, model, version,
id, dtype, state names and shapes, its step count and, when its last step carried
`sequence_offset`, that step's length, digest and answer layout), the raw float32 state and
the answer's raw tensors, expiring after the idle timeout (refreshed by every step). A
sorted set indexes the sessions by deadline: it gives the session count for the limit and
lets exactly one process report each expiry; a second one, of the same names in
lexicographic order, counts each principal's sessions (their names share a prefix).

A session that ends with a step that carried `sequence_offset` leaves a record of it
(`ended:<session>`: the state the step started from and its progress) for the idle timeout,
for a retry of that step.
"""

from __future__ import annotations

import json
import math
import struct
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import redis.asyncio as redis

from rnnserve.protocol import codec
from rnnserve.service.errors import FailedPrecondition
from rnnserve.service.sessions.state import (
    Answer,
    LastStep,
    Loaded,
    Progress,
    SessionKey,
    check_layout,
    row_layout,
)
from rnnserve.service.sessions.turns import Turns
from rnnserve.service.types import State

_HEADER_LENGTH = struct.Struct("<I")
_DTYPE = np.dtype("<f4")
_SWEEP_LIMIT = 1000  # members examined per expire() call, to keep each script short

# A session is expired once its value is gone; an index member whose value is gone is
# removed here, atomically, so that only one process reports it.
# KEYS: state, index, names. ARGV: member.
_FORGET_IF_GONE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
redis.call('ZREM', KEYS[3], ARGV[1])
return -redis.call('ZREM', KEYS[2], ARGV[1])
"""
# KEYS: index, names. ARGV: now, the state-key prefix, limit.
_SWEEP = """
local gone = {}
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, member in ipairs(due) do
  if redis.call('EXISTS', ARGV[2] .. member) == 0 then
    redis.call('ZREM', KEYS[1], member)
    redis.call('ZREM', KEYS[2], member)
    table.insert(gone, member)
  end
end
return gone
"""


class SessionIndex:
    """The Redis keys that index a namespace's sessions: `sessions` (by deadline) and
    `names` (every member at score 0, so that ZLEXCOUNT counts one principal's)."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.by_deadline = f"{namespace}:sessions"
        self.by_name = f"{namespace}:names"

    async def count(self, principal: str | None = None) -> int:
        if principal is None:
            return await self.client.zcard(self.by_deadline)
        prefix = principal_prefix(principal)
        # Names are ASCII JSON (below 0x7f): those of the principal lie in [prefix, prefix\x7f).
        return await self.client.zlexcount(self.by_name, f"[{prefix}", f"({prefix}\x7f")

    def add(self, pipe: Any, names: Sequence[str], deadline: float) -> None:
        pipe.zadd(self.by_deadline, dict.fromkeys(names, deadline))
        pipe.zadd(self.by_name, dict.fromkeys(names, 0))

    def remove(self, pipe: Any, names: Sequence[str]) -> None:
        pipe.zrem(self.by_deadline, *names)
        pipe.zrem(self.by_name, *names)


class RedisStore:
    def __init__(self, url: str, idle_timeout_s: float = 60.0, namespace: str = "rnnserve") -> None:
        self.idle_timeout_s = idle_timeout_s
        # A reply that never comes must fail the request (and let the sweeper go on), not
        # hold the session's lock forever.
        self._client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        self._state_prefix = f"{namespace}:state:"
        self._ended_prefix = f"{namespace}:ended:"
        self._index = SessionIndex(self._client, namespace)
        self._forget_if_gone = self._client.register_script(_FORGET_IF_GONE)
        self._sweep = self._client.register_script(_SWEEP)
        self._noticed: list[SessionKey] = []

    async def load(
        self, keys: Sequence[SessionKey], into: State, rows: Sequence[int]
    ) -> list[Loaded]:
        if not keys:
            return []
        blobs = await self._client.mget([self._state_prefix + member(key) for key in keys])
        loaded = [
            load_record(key, blob, into, row)
            for key, row, blob in zip(keys, rows, blobs, strict=True)
        ]
        missing = [index for index, found in enumerate(loaded) if found is None]
        if missing:  # ended lately? (only on this path: a step of a live session never asks)
            names = [self._ended_prefix + member(keys[index]) for index in missing]
            for index, blob in zip(missing, await self._client.mget(names), strict=True):
                loaded[index] = load_record(keys[index], blob, into, rows[index], ended=True)
        return loaded

    async def save(
        self,
        keys: Sequence[SessionKey],
        state: State,
        rows: Sequence[int],
        progress: Sequence[Progress],
    ) -> None:
        if not keys:
            return
        deadline = time.time() + self.idle_timeout_s
        async with self._client.pipeline(transaction=True) as pipe:
            prefix, keep_s = self._state_prefix, self.idle_timeout_s
            write_records(pipe, prefix, keys, state, rows, progress, keep_s)
            self._index.add(pipe, [member(key) for key in keys], deadline)
            await pipe.execute()

    async def contains(self, keys: Sequence[SessionKey]) -> list[bool]:
        async with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                name = member(key)
                await self._forget_if_gone(
                    keys=[self._state_prefix + name, self._index.by_deadline, self._index.by_name],
                    args=[name],
                    client=pipe,
                )
            found = await pipe.execute()
        self._noticed += [key for key, one in zip(keys, found, strict=True) if one == -1]
        return [one == 1 for one in found]

    async def delete(self, keys: Sequence[SessionKey]) -> list[bool]:
        if not keys:
            return []
        async with self._client.pipeline(transaction=True) as pipe:
            deleted = await self._delete(pipe, keys)
        return deleted

    async def end(
        self,
        keys: Sequence[SessionKey],
        state: State,
        rows: Sequence[int],
        progress: Sequence[Progress],
    ) -> None:
        if not keys:
            return
        async with self._client.pipeline(transaction=True) as pipe:
            prefix, keep_s = self._ended_prefix, self.idle_timeout_s
            write_records(pipe, prefix, keys, state, rows, progress, keep_s)
            await self._delete(pipe, keys)

    async def _delete(self, pipe: Any, keys: Sequence[SessionKey]) -> list[bool]:
        for key in keys:
            pipe.delete(self._state_prefix + member(key))
        self._index.remove(pipe, [member(key) for key in keys])
        results = await pipe.execute()
        return [count > 0 for count in results[-2 - len(keys) : -2]]

    async def count(self, principal: str | None = None) -> int:
        return await self._index.count(principal)

    async def expire(self) -> list[SessionKey]:
        gone = await self._sweep(
            keys=[self._index.by_deadline, self._index.by_name],
            args=[time.time(), self._state_prefix, _SWEEP_LIMIT],
        )
        expired = [session_of(name) for name in gone] + self._noticed
        self._noticed = []
        return expired

    async def start(self, turns: Turns) -> None:
        """Nothing runs in the background: expiry happens in expire()."""

    async def close(self) -> None:
        await self._client.aclose()


def member(key: SessionKey) -> str:
    """The session's name in Redis. JSON keeps 7 and "7" apart, turns back into the key
    and starts with the principal (`principal_prefix`)."""
    return json.dumps(list(key), separators=(",", ":"))


def principal_prefix(principal: str) -> str:
    """What the name of every session of `principal`, and of no other, starts with."""
    return json.dumps([principal], separators=(",", ":"))[:-1] + ","


def session_of(name: bytes | str) -> SessionKey:
    return SessionKey(*json.loads(name))


def one_row(state: State, row: int) -> State:
    return {name: array[:, row : row + 1] for name, array in state.items()}


def write_records(
    pipe: Any,
    prefix: str,
    keys: Sequence[SessionKey],
    state: State,
    rows: Sequence[int],
    progress: Sequence[Progress],
    keep_s: float,
) -> None:
    """Queues on `pipe` each session's record (its row of `state` and its progress) under
    `prefix` (`state:` for live sessions, `ended:` for ended ones), kept for `keep_s`."""
    for key, row, one in zip(keys, rows, progress, strict=True):
        record = encode_record(key, one_row(state, row), one)
        pipe.set(prefix + member(key), record, px=round(keep_s * 1000))


def load_record(
    key: SessionKey, blob: bytes | None, into: State, row: int, *, ended: bool = False
) -> Loaded:
    """A stored record copied into `row` of `into`: its progress (None without a record,
    FailedPrecondition when it cannot serve)."""
    if blob is None:
        return None
    try:
        state, progress = decode_record(key, blob)
        check_layout(key, row_layout(state), row_layout(into))
    except FailedPrecondition as error:
        return error
    for name, array in state.items():
        into[name][:, row] = array[:, 0]
    progress.ended = ended
    return progress


def encode_record(key: SessionKey, state: State, progress: Progress) -> bytes:
    """A session's one-row state and progress as one Redis value."""
    header: dict[str, Any] = {
        "principal": key.principal,
        "model": key.model,
        "version": key.version,
        "sequence_id": key.sequence_id,
        "dtype": _DTYPE.str,
        "names": list(state),
        "shapes": [list(array.shape) for array in state.values()],
        "offset": progress.offset,
    }
    arrays = (np.ascontiguousarray(array, dtype=_DTYPE) for array in state.values())
    parts = [array.tobytes() for array in arrays]
    if progress.last is not None:
        answer = [
            (name, _datatype(array), list(array.shape), codec.raw_of(_datatype(array), array))
            for name, array in progress.last.answer.items()
        ]
        header["last"] = {
            "length": progress.last.length,
            "digest": progress.last.digest.hex(),
            "answer": [[name, datatype, shape, len(raw)] for name, datatype, shape, raw in answer],
        }
        parts += [raw for *_, raw in answer]
    encoded = json.dumps(header).encode()
    return _HEADER_LENGTH.pack(len(encoded)) + encoded + b"".join(parts)


def decode_record(key: SessionKey, blob: bytes) -> tuple[State, Progress]:
    """The one-row state and progress `encode_record` wrote; FailedPrecondition when it was
    written for another session or in another dtype."""
    (length,) = _HEADER_LENGTH.unpack_from(blob)
    header = json.loads(blob[_HEADER_LENGTH.size : _HEADER_LENGTH.size + length])
    owner = SessionKey(
        header["principal"], header["model"], header["version"], header["sequence_id"]
    )
    if owner != key or header["dtype"] != _DTYPE.str:
        raise FailedPrecondition(
            f"stored state of {key.describe()} belongs to {owner.describe()} "
            f"with dtype {header['dtype']}; begin the sequence again with sequence_start=true"
        )
    state: State = {}
    offset = _HEADER_LENGTH.size + length
    for name, shape in zip(header["names"], header["shapes"], strict=True):
        count = math.prod(shape)
        state[name] = np.frombuffer(blob, _DTYPE, count, offset).reshape(shape)
        offset += count * _DTYPE.itemsize
    last = header.get("last")
    if last is None:
        return state, Progress(header["offset"])
    answer: Answer = {}
    for name, datatype, shape, size in last["answer"]:
        raw = blob[offset : offset + size]
        answer[name] = codec.array_from_raw(name, datatype, shape, raw)
        offset += size
    step = LastStep(last["length"], bytes.fromhex(last["digest"]), answer)
    return state, Progress(header["offset"], step)


def _datatype(array: np.ndarray) -> str:
    return "BYTES" if array.dtype == object else codec.DATATYPE_OF_DTYPE[array.dtype]
