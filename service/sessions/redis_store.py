"""States in Redis, so that several server processes serve the same sessions and a
session outlives the process that started it.

Each session is one Redis string holding a small JSON header (principal, model, version,
id, dtype, state names and shapes, its step count and, when its last step carried
`sequence_offset`, that step's length, digest and answer layout), the raw float32 state and
the answer's raw tensors, expiring after the idle timeout (refreshed by every step). A
sorted set indexes the sessions by deadline: it gives the session count for the limit and
lets exactly one process report each expiry; a second one, of the same names in
lexicographic order, counts each principal's sessions (their names share a prefix). Both
are kept per bucket, beside the states they index (redis_client.py: one bucket on one
server, 64 hash slots in a cluster), so that each write is one atomic script on one slot;
a count adds the buckets' up.

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

from rnnserve.protocol import codec
from rnnserve.service.errors import FailedPrecondition
from rnnserve.service.sessions.redis_client import Command, Keyspace, RedisClient, Script
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
_SWEEP_LIMIT = 1000  # members examined per bucket and expire() call, to keep each script short

# Every script touches the keys of one bucket (redis_client.py): one hash slot in a cluster.
# KEYS: index, names, then each session's state key. ARGV: deadline, ttl in ms, then each
# session's member and record. Stores the states and indexes them, atomically.
_SAVE = Script("""
for i = 3, #KEYS do
  redis.call('SET', KEYS[i], ARGV[2 * i - 2], 'PX', ARGV[2])
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2 * i - 3])
  redis.call('ZADD', KEYS[2], 0, ARGV[2 * i - 3])
end
""")
# KEYS: index, names, then each session's state key. ARGV: each session's member. Frees the
# states; returns, per session, whether there was one.
_DELETE = Script("""
local deleted = {}
for i = 3, #KEYS do
  deleted[i - 2] = redis.call('DEL', KEYS[i])
  redis.call('ZREM', KEYS[1], ARGV[i - 2])
  redis.call('ZREM', KEYS[2], ARGV[i - 2])
end
return deleted
""")
# A session is expired once its value is gone; an index member whose value is gone is
# removed here, atomically, so that only one process reports it.
# KEYS: state, index, names. ARGV: member.
_FORGET_IF_GONE = Script("""
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
redis.call('ZREM', KEYS[3], ARGV[1])
return -redis.call('ZREM', KEYS[2], ARGV[1])
""")
# KEYS: index, names. ARGV: now, the bucket's state-key prefix, limit.
_SWEEP = Script("""
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
""")


class SessionIndex:
    """The Redis keys that index a namespace's sessions, in each bucket: `sessions` (by
    deadline) and `names` (every member at score 0, so that ZLEXCOUNT counts one
    principal's). Counts add up the buckets' (one round trip per node)."""

    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis

    def by_deadline(self, bucket: int) -> str:
        return self.redis.keys.prefix(bucket) + "sessions"

    def by_name(self, bucket: int) -> str:
        return self.redis.keys.prefix(bucket) + "names"

    def keys(self, bucket: int) -> list[str]:
        return [self.by_deadline(bucket), self.by_name(bucket)]

    async def count(self, principal: str | None = None) -> int:
        buckets = range(self.redis.keys.buckets)
        if principal is None:
            commands = [Command.of("ZCARD", self.by_deadline(bucket)) for bucket in buckets]
        else:
            prefix = principal_prefix(principal)
            # Names are ASCII JSON (below 0x7f): the principal's lie in [prefix, prefix\x7f).
            commands = [
                Command.of("ZLEXCOUNT", self.by_name(bucket), f"[{prefix}", f"({prefix}\x7f")
                for bucket in buckets
            ]
        return sum(await self.redis.run(commands))


class RedisStore:
    def __init__(
        self,
        url: str,
        idle_timeout_s: float = 60.0,
        namespace: str = "rnnserve",
        durability: str = "none",
        durability_timeout_s: float = 1.0,
    ) -> None:
        self.idle_timeout_s = idle_timeout_s
        # A reply that never comes must fail the request (and let the sweeper go on), not
        # hold the session's lock forever.
        self._redis = RedisClient(url, namespace, 10.0, durability, durability_timeout_s)
        self._index = SessionIndex(self._redis)
        self._noticed: list[SessionKey] = []

    async def load(
        self, keys: Sequence[SessionKey], into: State, rows: Sequence[int]
    ) -> list[Loaded]:
        if not keys:
            return []
        names = [member(key) for key in keys]
        blobs = await self._get("state", names)
        loaded = [
            load_record(key, blob, into, row)
            for key, row, blob in zip(keys, rows, blobs, strict=True)
        ]
        missing = [index for index, found in enumerate(loaded) if found is None]
        if missing:  # ended lately? (only on this path: a step of a live session never asks)
            ended = await self._get("ended", [names[index] for index in missing])
            for index, blob in zip(missing, ended, strict=True):
                loaded[index] = load_record(keys[index], blob, into, rows[index], ended=True)
        return loaded

    async def _get(self, kind: str, names: list[str]) -> list[bytes | None]:
        """The values of the sessions' `kind` keys: an MGET per bucket."""
        space = self._redis.keys
        groups = list(space.by_bucket(names).values())
        commands = [
            Command.of("MGET", *(space.key(kind, names[i]) for i in group)) for group in groups
        ]
        values: list[bytes | None] = [None] * len(names)
        for group, got in zip(groups, await self._redis.run(commands), strict=True):
            for index, value in zip(group, got, strict=True):
                values[index] = value
        return values

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
        space, names = self._redis.keys, [member(key) for key in keys]
        commands = []
        for bucket, group in space.by_bucket(names).items():
            records = [
                part
                for i in group
                for part in (names[i], encode_record(keys[i], one_row(state, rows[i]), progress[i]))
            ]
            state_keys = [space.key("state", names[i]) for i in group]
            ttl = round(self.idle_timeout_s * 1000)
            commands.append(
                Command.call(
                    _SAVE, [*self._index.keys(bucket), *state_keys], [deadline, ttl, *records]
                )
            )
        await self._redis.run(commands, durable=True)

    async def contains(self, keys: Sequence[SessionKey]) -> list[bool]:
        space = self._redis.keys
        commands = []
        for key in keys:
            name = member(key)
            index = self._index.keys(space.bucket(name))
            commands.append(
                Command.call(_FORGET_IF_GONE, [space.key("state", name), *index], [name])
            )
        found = await self._redis.run(commands)
        self._noticed += [key for key, one in zip(keys, found, strict=True) if one == -1]
        return [one == 1 for one in found]

    async def delete(self, keys: Sequence[SessionKey]) -> list[bool]:
        if not keys:
            return []
        return await self._delete(keys, [])

    async def end(
        self,
        keys: Sequence[SessionKey],
        state: State,
        rows: Sequence[int],
        progress: Sequence[Progress],
    ) -> None:
        if not keys:
            return
        keep_s = self.idle_timeout_s
        records = write_records(self._redis.keys, "ended", keys, state, rows, progress, keep_s)
        await self._delete(keys, records)

    async def _delete(self, keys: Sequence[SessionKey], first: list[Command]) -> list[bool]:
        """Frees the sessions' states after the commands `first`, in one batch."""
        space, names = self._redis.keys, [member(key) for key in keys]
        groups = space.by_bucket(names)
        commands = [*first]
        for bucket, group in groups.items():
            state_keys = [space.key("state", names[i]) for i in group]
            members = [names[i] for i in group]
            commands.append(
                Command.call(_DELETE, [*self._index.keys(bucket), *state_keys], members)
            )
        replies = (await self._redis.run(commands, durable=True))[len(first) :]
        deleted = [False] * len(keys)
        for group, counts in zip(groups.values(), replies, strict=True):
            for index, count in zip(group, counts, strict=True):
                deleted[index] = count > 0
        return deleted

    async def count(self, principal: str | None = None) -> int:
        return await self._index.count(principal)

    async def expire(self) -> list[SessionKey]:
        now, space = time.time(), self._redis.keys
        sweeps = [
            Command.call(
                _SWEEP,
                self._index.keys(bucket),
                [now, space.prefix(bucket) + "state:", _SWEEP_LIMIT],
                retry_safe=False,  # it reports what it removes, once
            )
            for bucket in range(space.buckets)
        ]
        gone = [name for names in await self._redis.run(sweeps) for name in names]
        expired = [session_of(name) for name in gone] + self._noticed
        self._noticed = []
        return expired

    async def start(self, turns: Turns) -> None:
        """Nothing runs in the background: expiry happens in expire(). Checks that the URL
        says what the Redis is (a cluster or one server)."""
        await self._redis.check()

    async def close(self) -> None:
        await self._redis.close()


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
    space: Keyspace,
    kind: str,
    keys: Sequence[SessionKey],
    state: State,
    rows: Sequence[int],
    progress: Sequence[Progress],
    keep_s: float,
) -> list[Command]:
    """The commands that store each session's record (its row of `state` and its progress)
    as its `kind` key (`state` for live sessions, `ended` for ended ones), kept for
    `keep_s`."""
    return [
        Command.of(
            "SET",
            space.key(kind, member(key)),
            encode_record(key, one_row(state, row), one),
            "PX",
            round(keep_s * 1000),
        )
        for key, row, one in zip(keys, rows, progress, strict=True)
    ]


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
