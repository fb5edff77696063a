"""States in Redis, so that several server processes serve the same sessions and a
session outlives the process that started it.

Each session is one Redis string holding a small JSON header (model, version, id, dtype,
state names, shapes) and the raw float32 bytes, expiring after the idle timeout (refreshed by
every step). A sorted set indexes the sessions by deadline: it gives the session count
for the limit and lets exactly one process report each expiry.
"""

from __future__ import annotations

import json
import math
import struct
import time
from collections.abc import Sequence

import numpy as np
import redis.asyncio as redis

from rnnserve.service.errors import FailedPrecondition
from rnnserve.service.sessions.state import Loaded, SessionKey, check_layout, row_layout
from rnnserve.service.sessions.turns import Turns
from rnnserve.service.types import State

_HEADER_LENGTH = struct.Struct("<I")
_DTYPE = np.dtype("<f4")
_SWEEP_LIMIT = 1000  # members examined per expire() call, to keep each script short

# A session is expired once its value is gone; an index member whose value is gone is
# removed here, atomically, so that only one process reports it.
_FORGET_IF_GONE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
return -redis.call('ZREM', KEYS[2], ARGV[1])
"""
_SWEEP = """
local gone = {}
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, member in ipairs(due) do
  if redis.call('EXISTS', ARGV[2] .. member) == 0 then
    redis.call('ZREM', KEYS[1], member)
    table.insert(gone, member)
  end
end
return gone
"""


class RedisStore:
    def __init__(self, url: str, idle_timeout_s: float = 60.0, namespace: str = "rnnserve") -> None:
        self.idle_timeout_s = idle_timeout_s
        # A reply that never comes must fail the request (and let the sweeper go on), not
        # hold the session's lock forever.
        self._client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        self._state_prefix = f"{namespace}:state:"
        self._index = f"{namespace}:sessions"
        self._forget_if_gone = self._client.register_script(_FORGET_IF_GONE)
        self._sweep = self._client.register_script(_SWEEP)
        self._noticed: list[SessionKey] = []

    async def load(
        self, keys: Sequence[SessionKey], into: State, rows: Sequence[int]
    ) -> list[Loaded]:
        if not keys:
            return []
        expected = row_layout(into)
        blobs = await self._client.mget([self._state_key(key) for key in keys])
        loaded: list[Loaded] = []
        for key, row, blob in zip(keys, rows, blobs, strict=True):
            if blob is None:
                loaded.append(False)
                continue
            try:
                state = decode_state(key, blob)
                check_layout(key, row_layout(state), expected)
            except FailedPrecondition as error:
                loaded.append(error)
                continue
            for name, array in state.items():
                into[name][:, row] = array[:, 0]
            loaded.append(True)
        return loaded

    async def save(self, keys: Sequence[SessionKey], state: State, rows: Sequence[int]) -> None:
        if not keys:
            return
        deadline = time.time() + self.idle_timeout_s
        async with self._client.pipeline(transaction=True) as pipe:
            for key, row in zip(keys, rows, strict=True):
                one_row = {name: array[:, row : row + 1] for name, array in state.items()}
                pipe.set(
                    self._state_key(key),
                    encode_state(key, one_row),
                    px=round(self.idle_timeout_s * 1000),
                )
            pipe.zadd(self._index, {member(key): deadline for key in keys})
            await pipe.execute()

    async def contains(self, keys: Sequence[SessionKey]) -> list[bool]:
        async with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                await self._forget_if_gone(
                    keys=[self._state_key(key), self._index], args=[member(key)], client=pipe
                )
            found = await pipe.execute()
        self._noticed += [key for key, one in zip(keys, found, strict=True) if one == -1]
        return [one == 1 for one in found]

    async def delete(self, keys: Sequence[SessionKey]) -> list[bool]:
        if not keys:
            return []
        async with self._client.pipeline(transaction=True) as pipe:
            for key in keys:
                pipe.delete(self._state_key(key))
            pipe.zrem(self._index, *(member(key) for key in keys))
            *deleted, _ = await pipe.execute()
        return [count > 0 for count in deleted]

    async def count(self) -> int:
        return await self._client.zcard(self._index)

    async def expire(self) -> list[SessionKey]:
        gone = await self._sweep(
            keys=[self._index], args=[time.time(), self._state_prefix, _SWEEP_LIMIT]
        )
        expired = [session_of(name) for name in gone] + self._noticed
        self._noticed = []
        return expired

    async def start(self, turns: Turns) -> None:
        """Nothing runs in the background: expiry happens in expire()."""

    async def close(self) -> None:
        await self._client.aclose()

    def _state_key(self, key: SessionKey) -> str:
        return self._state_prefix + member(key)


def member(key: SessionKey) -> str:
    """The session's name in Redis. JSON keeps 7 and "7" apart and turns back into the key."""
    return json.dumps([key.model, key.version, key.sequence_id], separators=(",", ":"))


def session_of(name: bytes | str) -> SessionKey:
    model, version, sequence_id = json.loads(name)
    return SessionKey(model, version, sequence_id)


def encode_state(key: SessionKey, state: State) -> bytes:
    header = json.dumps(
        {
            "model": key.model,
            "version": key.version,
            "sequence_id": key.sequence_id,
            "dtype": _DTYPE.str,
            "names": list(state),
            "shapes": [list(array.shape) for array in state.values()],
        }
    ).encode()
    arrays = (np.ascontiguousarray(array, dtype=_DTYPE) for array in state.values())
    payload = b"".join(array.tobytes() for array in arrays)
    return _HEADER_LENGTH.pack(len(header)) + header + payload


def decode_state(key: SessionKey, blob: bytes) -> State:
    """The one-row state `encode_state` wrote; FailedPrecondition when it was written for
    another session or in another dtype."""
    (length,) = _HEADER_LENGTH.unpack_from(blob)
    header = json.loads(blob[_HEADER_LENGTH.size : _HEADER_LENGTH.size + length])
    owner = SessionKey(header["model"], header["version"], header["sequence_id"])
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
    return state
