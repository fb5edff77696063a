"""States in Redis, so that several server processes serve the same sessions and a
session outlives the process that started it.

Each session is one Redis string holding a small JSON header (principal, model, version,
id, dtype, state names and shapes, its step count and, when its last step carried
`sequence_offset`, that step's length, digest and answer layout), the raw float32 state and
the answer's raw tensors, expiring after the idle timeout (refreshed by every step). Sorted
sets index the sessions (SessionIndex): by deadline, for the session count and so that
exactly one process reports each expiry; by name, which counts each principal's sessions
(their names share a prefix); by model version, which `rnnserve_sessions_active` counts
when scraped (RedisCensus). The indexes are kept per bucket, beside the states they index
(redis_client.py: one bucket on one server, 64 hash slots in a cluster), so that each write
is one atomic script on one slot; a count adds the buckets' up.

A session that ends leaves a record of its end (`ended:<session>`, in its bucket) for the
idle timeout: a client's end its step count and, when its final step carried
`sequence_offset`, that step and the state it started from, for a retry of it; an expiry,
noticed by the sweep, a tombstone saying so. When Redis loses its data (a restart without
persistence, a flush), `Generation` notices (per bucket: in a cluster one master may lose
its data alone), and for the idle timeout after it a step of a sequence Redis no longer
knows hears that its state was lost (ABORTED), not that it was never started.

Redis faults: every call is bounded by `state_store_timeout_s` (redis_client.py: Timeouts);
a call that cannot reach Redis (in a cluster: once redis_client's failover retries gave up)
raises StoreUnavailable through the store's Reachability (reachability.py): UNAVAILABLE for
the client, one warning in the log.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import math
import struct
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ParamSpec, Protocol, TypeVar

import numpy as np

from rnnserve.protocol import codec
from rnnserve.service.errors import FailedPrecondition
from rnnserve.service.redis_url import where
from rnnserve.service.sessions.reachability import Reachability
from rnnserve.service.sessions.redis_client import (
    UNREACHABLE,
    Command,
    Keyspace,
    RedisClient,
    Script,
)
from rnnserve.service.sessions.state import (
    Answer,
    Gone,
    LastStep,
    Loaded,
    Progress,
    SessionKey,
    check_layout,
    expired,
    row_layout,
    tombstone_s,
)
from rnnserve.service.sessions.turns import Turns
from rnnserve.service.types import State

log = logging.getLogger(__name__)

_HEADER_LENGTH = struct.Struct("<I")
_DTYPE = np.dtype("<f4")
_SWEEP_LIMIT = 1000  # members examined per bucket and expire() call, to keep each script short

# Every script touches the keys of one bucket (redis_client.py): one hash slot in a cluster.
# Lua shared by the scripts that drop sessions from the index. KEYS[1..3] are the bucket's
# index: by deadline, by name, by model version.
UNINDEX = """
local function unindex(member)
  redis.call('ZREM', KEYS[1], member)
  redis.call('ZREM', KEYS[2], member)
  redis.call('ZREM', KEYS[3], member)
end
"""
# Lua shared by the scripts that index sessions: KEYS[1..3] as above, KEYS[4] the bucket's
# version tags (tag -> the model version it stands for).
INDEX = """
local function index(member, deadline, tag, version)
  redis.call('ZADD', KEYS[1], deadline, member)
  redis.call('ZADD', KEYS[2], 0, member)
  redis.call('ZADD', KEYS[3], tag, member)
  redis.call('HSET', KEYS[4], tag, version)
end
"""
# KEYS: the index (3), the version tags, then each session's state key. ARGV: deadline, ttl
# in ms, then per session its member, record, version tag and version. Stores the states and
# indexes them, atomically.
_SAVE = Script(
    INDEX
    + """
for i = 5, #KEYS do
  local at = 4 * (i - 5) + 3
  redis.call('SET', KEYS[i], ARGV[at + 1], 'PX', ARGV[2])
  index(ARGV[at], ARGV[1], ARGV[at + 2], ARGV[at + 3])
end
"""
)
# KEYS: the index (3), then each session's state key. ARGV: each session's member. Frees the
# states; returns, per session, whether there was one.
_DELETE = Script(
    UNINDEX
    + """
local deleted = {}
for i = 4, #KEYS do
  deleted[i - 3] = redis.call('DEL', KEYS[i])
  unindex(ARGV[i - 3])
end
return deleted
"""
)
# A session is expired once its value is gone; an index member whose value is gone is
# removed here, atomically, so that only one process reports it, leaving a tombstone.
# KEYS: the index (3), state, ended. ARGV: member, tombstone, its ttl in ms.
_FORGET_IF_GONE = Script(
    UNINDEX
    + """
if redis.call('EXISTS', KEYS[4]) == 1 then return 1 end
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == false then return 0 end
unindex(ARGV[1])
redis.call('SET', KEYS[5], ARGV[2], 'PX', ARGV[3])
return -1
"""
)
# KEYS: the index (3). ARGV: now, the bucket's state-key prefix, limit, its ended-key
# prefix, tombstone, its ttl in ms.
_SWEEP = Script(
    UNINDEX
    + """
local gone = {}
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, member in ipairs(due) do
  if redis.call('EXISTS', ARGV[2] .. member) == 0 then
    unindex(member)
    redis.call('SET', ARGV[4] .. member, ARGV[5], 'PX', ARGV[6])
    table.insert(gone, member)
  end
end
return gone
"""
)
# KEYS: a bucket's generation. ARGV: a fresh token. The token Redis holds (this one, when it
# had none).
_GENERATION = Script("""
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
""")

P = ParamSpec("P")
T = TypeVar("T")


class _Guarded(Protocol):
    reachability: Reachability


def guarded(
    operation: str,
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """A store method that reaches Redis: a failure to reach it (redis_client.UNREACHABLE)
    becomes StoreUnavailable, and every outcome tells the store's Reachability."""

    def decorate(method: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(method)
        async def call(*args: P.args, **kwargs: P.kwargs) -> T:
            store: _Guarded = args[0]  # type: ignore[assignment]
            try:
                result = await method(*args, **kwargs)
            except UNREACHABLE as error:
                raise store.reachability.failed(operation, error) from None
            store.reachability.answered()
            return result

        return call

    return decorate


def version_tag(model: str, version: str) -> int:
    """The score of a model version's sessions in the index by model version: 48 bits of a
    hash, exact in a float."""
    digest = hashlib.blake2b(json.dumps([model, version]).encode(), digest_size=6).digest()
    return int.from_bytes(digest, "big")


class SessionIndex:
    """The Redis keys that index a namespace's sessions, in each bucket: `sessions` (by
    deadline), `names` (every member at score 0, so that ZLEXCOUNT counts one principal's)
    and `versions` (by the tag of their model version; the hash `version-tags` names each
    tag's version). Counts add up the buckets' (one round trip per node)."""

    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis

    def by_deadline(self, bucket: int) -> str:
        return self.redis.keys.prefix(bucket) + "sessions"

    def by_name(self, bucket: int) -> str:
        return self.redis.keys.prefix(bucket) + "names"

    def by_version(self, bucket: int) -> str:
        return self.redis.keys.prefix(bucket) + "versions"

    def tags(self, bucket: int) -> str:
        return self.redis.keys.prefix(bucket) + "version-tags"

    def keys(self, bucket: int) -> list[str]:
        """The sorted sets, in the order scripts take them (KEYS[1..3], UNINDEX)."""
        return [self.by_deadline(bucket), self.by_name(bucket), self.by_version(bucket)]

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

    async def by_versions(self) -> dict[tuple[str, str], int]:
        """Sessions by model version, over the buckets (two round trips per node)."""
        buckets = range(self.redis.keys.buckets)
        tags = await self.redis.run([Command.of("HGETALL", self.tags(b)) for b in buckets])
        counted = [(b, tag, version) for b in buckets for tag, version in tags[b].items()]
        counts = await self.redis.run(
            [Command.of("ZCOUNT", self.by_version(b), tag, tag) for b, tag, _ in counted]
        )
        active: dict[tuple[str, str], int] = {}
        for (_, _, version), count in zip(counted, counts, strict=True):
            model, number = json.loads(version)
            active[model, number] = active.get((model, number), 0) + count
        return active


class RedisCensus:
    """Counts the sessions of each model version in a namespace's index, from any thread
    (the /metrics scrape's), with a client of its own on an event loop of its own, in a
    thread of its own: `rnnserve_sessions_active` when scraped (a lone server's store, or
    the supervisor of workers sharing the Redis)."""

    def __init__(self, url: str, namespace: str, timeout_s: float) -> None:
        self._url, self._namespace, self._timeout_s = url, namespace, timeout_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="rnnserve-census", daemon=True
        )
        self._thread.start()
        self._index: SessionIndex | None = None

    def __call__(self) -> dict[tuple[str, str], int]:
        return asyncio.run_coroutine_threadsafe(self._count(), self._loop).result()

    async def _count(self) -> dict[tuple[str, str], int]:
        if self._index is None:  # made in the loop that uses it
            redis = RedisClient(self._url, self._namespace, self._timeout_s)
            self._index = SessionIndex(redis)
        return await self._index.by_versions()

    def close(self) -> None:
        if self._index is not None:
            asyncio.run_coroutine_threadsafe(self._index.redis.close(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


class Generation:
    """Whether Redis lost its data since this process first looked: a key in each bucket
    that every process creates when missing, holding a random token. Another token (or
    none) than the one seen means Redis (in a cluster: the master of that bucket) restarted
    empty or was flushed: the sessions it held are lost."""

    def __init__(self, redis: RedisClient, where: str, consequence: str) -> None:
        """`consequence`: what the loss means for the store, for the log line."""
        self._redis = redis
        self._where = where
        self._consequence = consequence
        self.tokens: list[bytes | None] = [None] * redis.keys.buckets  # the ones seen last
        self._lost_at: list[float | None] = [None] * redis.keys.buckets  # time.time()

    async def check(self) -> list[int]:
        """The buckets whose data was lost since the last check (logged once per loss)."""
        space = self._redis.keys
        token = uuid.uuid4().hex
        found = await self._redis.run(
            [
                Command.call(_GENERATION, [space.prefix(bucket) + "generation"], [token])
                for bucket in range(space.buckets)
            ]
        )
        lost = [
            bucket
            for bucket, (seen, now) in enumerate(zip(self.tokens, found, strict=True))
            if seen is not None and now != seen
        ]
        self.tokens = list(found)
        if lost:
            now = time.time()
            for bucket in lost:
                self._lost_at[bucket] = now
            log.warning(
                "Redis at %s lost its data (it restarted without persistence, or was flushed"
                "%s): %s",
                self._where,
                "" if space.buckets == 1 else f"; {len(lost)} of {space.buckets} buckets",
                self._consequence,
            )
        return lost

    def lost(self, name: str, within_s: float) -> Gone | None:
        """The tombstone of a sequence (named `name`) Redis no longer knows, when its
        bucket lost its data within the last `within_s` seconds (such a sequence most likely
        lived there)."""
        lost_at = self._lost_at[self._redis.keys.bucket(name)]
        if lost_at is None or time.time() - lost_at > within_s:
            return None
        at = time.strftime("%H:%M:%S", time.gmtime(lost_at))
        return Gone(
            "lost",
            f"Redis at {self._where} lost its data at {at} UTC (it restarted without "
            "persistence, or was flushed)",
        )


class RedisStore:
    def __init__(
        self,
        url: str,
        idle_timeout_s: float = 60.0,
        namespace: str = "rnnserve",
        durability: str = "none",
        durability_timeout_s: float = 1.0,
        *,
        timeout_s: float = 1.0,
    ) -> None:
        """`timeout_s`: state_store_timeout_s; `durability` and `durability_timeout_s`:
        state_durability and its timeout (redis_client.py)."""
        self.idle_timeout_s = idle_timeout_s
        self.reachability = Reachability("redis", where(url))
        self._url, self._namespace, self._timeout_s = url, namespace, timeout_s
        self._redis = RedisClient(url, namespace, timeout_s, durability, durability_timeout_s)
        self._index = SessionIndex(self._redis)
        self._generation = Generation(
            self._redis, where(url), "the sequences whose states it held are lost"
        )
        self._noticed: list[SessionKey] = []
        self._census: RedisCensus | None = None

    @guarded("load")
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
        if missing:  # what became of them (only on this path: a live session never asks)
            space = self._redis.keys
            commands = []
            for index in missing:
                name = names[index]
                commands.append(
                    Command.of("ZSCORE", self._index.by_deadline(space.bucket(name)), name)
                )
                commands.append(Command.of("GET", space.key("ended", name)))
            found = await self._redis.run(commands)
            for index, score, record in zip(missing, found[::2], found[1::2], strict=True):
                if record is not None:
                    loaded[index] = load_record(keys[index], record, into, rows[index], ended=True)
                elif score is not None:  # its value lapsed before the sweep saw it
                    loaded[index] = expired(self.idle_timeout_s)
            if any(loaded[index] is None for index in missing):
                await self._generation.check()
                keep_s = tombstone_s(self.idle_timeout_s)
                loaded = [
                    self._generation.lost(name, keep_s) if one is None else one
                    for name, one in zip(names, loaded, strict=True)
                ]
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

    @guarded("save")
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
        ttl = round(self.idle_timeout_s * 1000)
        commands = []
        for bucket, group in space.by_bucket(names).items():
            args: list[Any] = [deadline, ttl]
            for i in group:
                record = encode_record(keys[i], one_row(state, rows[i]), progress[i])
                tag = version_tag(keys[i].model, keys[i].version)
                args += [names[i], record, tag, json.dumps([keys[i].model, keys[i].version])]
            state_keys = [space.key("state", names[i]) for i in group]
            index = [*self._index.keys(bucket), self._index.tags(bucket)]
            commands.append(Command.call(_SAVE, [*index, *state_keys], args))
        await self._redis.run(commands, durable=True)

    @guarded("contains")
    async def contains(self, keys: Sequence[SessionKey]) -> list[bool]:
        space = self._redis.keys
        tombstone = encode_gone(expired(self.idle_timeout_s))
        keep_ms = round(tombstone_s(self.idle_timeout_s) * 1000)
        commands = []
        for key in keys:
            name = member(key)
            touched = [
                *self._index.keys(space.bucket(name)),
                space.key("state", name),
                space.key("ended", name),
            ]
            commands.append(Command.call(_FORGET_IF_GONE, touched, [name, tombstone, keep_ms]))
        found = await self._redis.run(commands)
        self._noticed += [key for key, one in zip(keys, found, strict=True) if one == -1]
        return [one == 1 for one in found]

    @guarded("delete")
    async def delete(self, keys: Sequence[SessionKey]) -> list[bool]:
        if not keys:
            return []
        return await self._delete(keys, [])

    @guarded("end")
    async def end(
        self,
        keys: Sequence[SessionKey],
        state: State,
        rows: Sequence[int],
        progress: Sequence[Progress],
    ) -> None:
        if not keys:
            return
        space, keep_s = self._redis.keys, self.idle_timeout_s
        records = write_records(space, "ended", keys, state, rows, progress, keep_s, ended=True)
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

    @guarded("count")
    async def count(self, principal: str | None = None) -> int:
        return await self._index.count(principal)

    def active(self) -> dict[tuple[str, str], int]:
        """Sessions by model version, counted in Redis (from the scrape's thread)."""
        if self._census is None:
            self._census = RedisCensus(self._url, self._namespace, self._timeout_s)
        return self._census()

    @guarded("expire")
    async def expire(self) -> list[SessionKey]:
        await self._generation.check()  # says so at once when Redis lost its data
        now, space = time.time(), self._redis.keys
        tombstone = encode_gone(expired(self.idle_timeout_s))
        keep_ms = round(tombstone_s(self.idle_timeout_s) * 1000)
        sweeps = [
            Command.call(
                _SWEEP,
                self._index.keys(bucket),
                [
                    now,
                    space.prefix(bucket) + "state:",
                    _SWEEP_LIMIT,
                    space.prefix(bucket) + "ended:",
                    tombstone,
                    keep_ms,
                ],
                retry_safe=False,  # it reports what it removes, once
            )
            for bucket in range(space.buckets)
        ]
        gone = [name for names in await self._redis.run(sweeps) for name in names]
        expired_keys = [session_of(name) for name in gone] + self._noticed
        self._noticed = []
        return expired_keys

    @guarded("start")
    async def start(self, turns: Turns) -> None:
        """Nothing runs in the background (expiry happens in expire()). Checks that the URL
        says what the Redis is (a cluster or one server), and notes the data's generation,
        to tell later whether Redis lost it."""
        await self._redis.check()
        await self._generation.check()

    async def close(self) -> None:
        await self._redis.close()
        if self._census is not None:
            self._census.close()


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
    *,
    ended: bool = False,
) -> list[Command]:
    """The commands that store each session's record (its row of `state` and its progress)
    as its `kind` key (`state` for live sessions, `ended` for ended ones), kept for
    `keep_s`. The record of an end keeps its state only when its final step carried an
    offset: for a retry of that step."""
    return [
        Command.of(
            "SET",
            space.key(kind, member(key)),
            encode_record(key, {} if ended and one.last is None else one_row(state, row), one),
            "PX",
            round(keep_s * 1000),
        )
        for key, row, one in zip(keys, rows, progress, strict=True)
    ]


def load_record(
    key: SessionKey, blob: bytes | None, into: State, row: int, *, ended: bool = False
) -> Loaded:
    """A stored record copied into `row` of `into`: its progress (None without a record,
    FailedPrecondition when it cannot serve), or the tombstone it is."""
    if blob is None:
        return None
    try:
        decoded = decode_record(key, blob)
        if isinstance(decoded, Gone):
            return decoded
        state, progress = decoded
        if state or not ended:  # the record of an end keeps a state only for a retry
            check_layout(key, row_layout(state), row_layout(into))
    except FailedPrecondition as error:
        return error
    for name, array in state.items():
        into[name][:, row] = array[:, 0]
    progress.ended = ended
    return progress


def encode_gone(gone: Gone) -> bytes:
    """A tombstone (an expired or lost session's record) as one Redis value."""
    header = json.dumps({"gone": gone.why, "reason": gone.reason}).encode()
    return _HEADER_LENGTH.pack(len(header)) + header


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


def decode_record(key: SessionKey, blob: bytes) -> tuple[State, Progress] | Gone:
    """The one-row state and progress `encode_record` wrote, or the tombstone `encode_gone`
    wrote; FailedPrecondition when it was written for another session or in another dtype."""
    (length,) = _HEADER_LENGTH.unpack_from(blob)
    header = json.loads(blob[_HEADER_LENGTH.size : _HEADER_LENGTH.size + length])
    if "gone" in header:
        return Gone(header["gone"], header["reason"])
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
