"""States in Redis, so that several server processes serve the same sessions and a
session outlives the process that started it.

Each session is one Redis string holding a small JSON header (principal, model, version,
id, dtype, state names and shapes, its step count and, when its last step carried
`sequence_offset`, that step's length, digest and answer layout), the raw float32 state and
the answer's raw tensors, expiring after the idle timeout (refreshed by every step). Sorted
sets index the sessions (SessionIndex): by deadline, for the session count and so that
exactly one process reports each expiry; by name, which counts each principal's sessions
(their names share a prefix); by model version, which `rnnserve_sessions_active` counts
when scraped (RedisCensus).

A session that ends leaves a record of its end (`ended:<session>`) for the idle timeout: a
client's end its step count and, when its final step carried `sequence_offset`, that step
and the state it started from, for a retry of it; an expiry, noticed by the sweep, a
tombstone saying so. When Redis loses its data (a restart without persistence, a flush),
`Generation` notices, and for the idle timeout after it a step of a sequence Redis no longer
knows hears that its state was lost (ABORTED), not that it was never started.

Redis faults: every call is bounded by `state_store_timeout_s` (a stopped Redis must not
hold requests) and never retried by the client library (a retried write could apply twice);
a call that cannot reach Redis raises StoreUnavailable through the store's Reachability
(reachability.py): UNAVAILABLE for the client, one warning in the log.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import struct
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ParamSpec, Protocol, TypeVar
from urllib.parse import urlsplit

import numpy as np
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from rnnserve.protocol import codec
from rnnserve.service.errors import FailedPrecondition
from rnnserve.service.sessions.reachability import Reachability
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
_SWEEP_LIMIT = 1000  # members examined per expire() call, to keep each script short
# Errors that mean Redis could not be reached or could not serve (not a bad command of
# ours): the request may be retried.
UNREACHABLE = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.MasterDownError,
    redis.exceptions.TryAgainError,
)

# Lua shared by the scripts that drop sessions from the index. KEYS[1..3] are the index's
# sorted sets: by deadline, by name, by model version.
UNINDEX = """
local function unindex(member)
  redis.call('ZREM', KEYS[1], member)
  redis.call('ZREM', KEYS[2], member)
  redis.call('ZREM', KEYS[3], member)
end
"""
# A session is expired once its value is gone; an index member whose value is gone is
# removed here, atomically, so that only one process reports it, leaving a tombstone.
# KEYS: the index (3), state, ended. ARGV: member, tombstone, its ttl in ms.
_FORGET_IF_GONE = (
    UNINDEX
    + """
if redis.call('EXISTS', KEYS[4]) == 1 then return 1 end
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == false then return 0 end
unindex(ARGV[1])
redis.call('SET', KEYS[5], ARGV[2], 'PX', ARGV[3])
return -1
"""
)
# KEYS: the index (3). ARGV: now, the state-key prefix, limit, the ended-key prefix,
# tombstone, its ttl in ms.
_SWEEP = (
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

P = ParamSpec("P")
T = TypeVar("T")


class _Guarded(Protocol):
    reachability: Reachability


def guarded(
    operation: str,
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """A store method that reaches Redis: a failure to reach it becomes StoreUnavailable,
    and every outcome tells the store's Reachability."""

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


def where(url: str) -> str:
    """host:port/db of a Redis URL, without its credentials: what logs and errors name."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}{parts.path or '/0'}"


def connect(url: str, timeout_s: float) -> aioredis.Redis:
    """A client whose every call answers or fails within `timeout_s`. A call that met a
    closed connection is tried once more, at once, on a new one: after Redis restarts, each
    pooled connection fails once that way. A timeout is not retried (a stopped Redis must
    not hold a request twice as long)."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=AsyncRetry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
    )


def version_tag(model: str, version: str) -> int:
    """The score of a model version's sessions in the index by model version: 48 bits of a
    hash, exact in a float."""
    digest = hashlib.blake2b(json.dumps([model, version]).encode(), digest_size=6).digest()
    return int.from_bytes(digest, "big")


class SessionIndex:
    """The Redis keys that index a namespace's sessions: `sessions` (by deadline), `names`
    (every member at score 0, so that ZLEXCOUNT counts one principal's) and `versions` (by
    the tag of their model version; the hash `version-tags` names each tag's version)."""

    def __init__(self, client: aioredis.Redis, namespace: str) -> None:
        self.client = client
        self.by_deadline = f"{namespace}:sessions"
        self.by_name = f"{namespace}:names"
        self.by_version = f"{namespace}:versions"
        self.tags = f"{namespace}:version-tags"

    @property
    def keys(self) -> list[str]:
        """The sorted sets, in the order scripts take them (KEYS[1..3], UNINDEX)."""
        return [self.by_deadline, self.by_name, self.by_version]

    async def count(self, principal: str | None = None) -> int:
        if principal is None:
            return await self.client.zcard(self.by_deadline)
        prefix = principal_prefix(principal)
        # Names are ASCII JSON (below 0x7f): those of the principal lie in [prefix, prefix\x7f).
        return await self.client.zlexcount(self.by_name, f"[{prefix}", f"({prefix}\x7f")

    def add(self, pipe: Any, keys: Sequence[SessionKey], deadline: float) -> None:
        names = [member(key) for key in keys]
        pipe.zadd(self.by_deadline, dict.fromkeys(names, deadline))
        pipe.zadd(self.by_name, dict.fromkeys(names, 0))
        tags = {(key.model, key.version): version_tag(key.model, key.version) for key in keys}
        pipe.zadd(
            self.by_version,
            {name: tags[key.model, key.version] for name, key in zip(names, keys, strict=True)},
        )
        pipe.hset(self.tags, mapping={tag: json.dumps(list(mv)) for mv, tag in tags.items()})

    def remove(self, pipe: Any, names: Sequence[str]) -> None:
        """Queues the removal: three replies."""
        for index in self.keys:
            pipe.zrem(index, *names)


class RedisCensus:
    """Counts the sessions of each model version in a namespace's index, from any thread,
    with a client of its own: `rnnserve_sessions_active` when scraped (a lone server's
    store, or the supervisor of workers sharing the Redis)."""

    def __init__(self, url: str, namespace: str, timeout_s: float) -> None:
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self._by_version = f"{namespace}:versions"
        self._tags = f"{namespace}:version-tags"

    def __call__(self) -> dict[tuple[str, str], int]:
        tags = self._client.hgetall(self._tags)
        with self._client.pipeline(transaction=False) as pipe:
            for tag in tags:
                pipe.zcount(self._by_version, tag, tag)
            counts = pipe.execute()
        return {
            tuple(json.loads(version)): count
            for version, count in zip(tags.values(), counts, strict=True)
        }  # type: ignore[misc]

    def close(self) -> None:
        self._client.close()


class Generation:
    """Whether Redis lost its data since this process first looked: a key every process
    creates when missing, holding a random token. Another token (or none) than the one
    seen means Redis restarted empty or was flushed: the sessions it held are lost."""

    def __init__(
        self, client: aioredis.Redis, namespace: str, where: str, consequence: str
    ) -> None:
        """`consequence`: what the loss means for the store, for the log line."""
        self._client = client
        self._key = f"{namespace}:generation"
        self._where = where
        self._consequence = consequence
        self.token: bytes | None = None  # the one seen last
        self._lost_at: float | None = None  # time.time() of the loss last noticed

    async def check(self) -> bool:
        """Whether the data was lost since the last check (logged once per loss)."""
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.set(self._key, uuid.uuid4().hex, nx=True)
            pipe.get(self._key)
            _, token = await pipe.execute()
        seen, self.token = self.token, token
        if seen is None or token == seen:
            return False
        self._lost_at = time.time()
        log.warning(
            "Redis at %s lost its data (it restarted without persistence, or was flushed): %s",
            self._where, self._consequence,
        )  # fmt: skip
        return True

    def lost(self, within_s: float) -> Gone | None:
        """The tombstone of a sequence Redis no longer knows, when it lost its data within
        the last `within_s` seconds (such a sequence most likely lived there)."""
        if self._lost_at is None or time.time() - self._lost_at > within_s:
            return None
        at = time.strftime("%H:%M:%S", time.gmtime(self._lost_at))
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
        timeout_s: float = 1.0,
    ) -> None:
        self.idle_timeout_s = idle_timeout_s
        self.reachability = Reachability("redis", where(url))
        self._url, self._namespace, self._timeout_s = url, namespace, timeout_s
        self._client = connect(url, timeout_s)
        self._state_prefix = f"{namespace}:state:"
        self._ended_prefix = f"{namespace}:ended:"
        self._index = SessionIndex(self._client, namespace)
        self._generation = Generation(
            self._client, namespace, where(url), "the sequences whose states it held are lost"
        )
        self._forget_if_gone = self._client.register_script(_FORGET_IF_GONE)
        self._sweep = self._client.register_script(_SWEEP)
        self._noticed: list[SessionKey] = []
        self._census: RedisCensus | None = None

    @guarded("load")
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
        if missing:  # what became of them (only on this path: a live session never asks)
            async with self._client.pipeline(transaction=False) as pipe:
                for index in missing:
                    pipe.zscore(self._index.by_deadline, member(keys[index]))
                    pipe.get(self._ended_prefix + member(keys[index]))
                found = await pipe.execute()
            for index, score, record in zip(missing, found[::2], found[1::2], strict=True):
                if record is not None:
                    loaded[index] = load_record(keys[index], record, into, rows[index], ended=True)
                elif score is not None:  # its value lapsed before the sweep saw it
                    loaded[index] = expired(self.idle_timeout_s)
            if any(loaded[index] is None for index in missing):
                await self._generation.check()
                lost = self._generation.lost(tombstone_s(self.idle_timeout_s))
                loaded = [lost if one is None else one for one in loaded]
        return loaded

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
        async with self._client.pipeline(transaction=True) as pipe:
            prefix, keep_s = self._state_prefix, self.idle_timeout_s
            write_records(pipe, prefix, keys, state, rows, progress, keep_s)
            self._index.add(pipe, keys, deadline)
            await pipe.execute()

    @guarded("contains")
    async def contains(self, keys: Sequence[SessionKey]) -> list[bool]:
        tombstone = encode_gone(expired(self.idle_timeout_s))
        async with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                name = member(key)
                await self._forget_if_gone(
                    keys=[*self._index.keys, self._state_prefix + name, self._ended_prefix + name],
                    args=[name, tombstone, round(tombstone_s(self.idle_timeout_s) * 1000)],
                    client=pipe,
                )
            found = await pipe.execute()
        self._noticed += [key for key, one in zip(keys, found, strict=True) if one == -1]
        return [one == 1 for one in found]

    @guarded("delete")
    async def delete(self, keys: Sequence[SessionKey]) -> list[bool]:
        if not keys:
            return []
        async with self._client.pipeline(transaction=True) as pipe:
            deleted = await self._delete(pipe, keys)
        return deleted

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
        async with self._client.pipeline(transaction=True) as pipe:
            prefix, keep_s = self._ended_prefix, self.idle_timeout_s
            write_records(pipe, prefix, keys, state, rows, progress, keep_s, ended=True)
            await self._delete(pipe, keys)

    async def _delete(self, pipe: Any, keys: Sequence[SessionKey]) -> list[bool]:
        for key in keys:
            pipe.delete(self._state_prefix + member(key))
        self._index.remove(pipe, [member(key) for key in keys])
        results = await pipe.execute()
        return [count > 0 for count in results[-3 - len(keys) : -3]]

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
        gone = await self._sweep(
            keys=self._index.keys,
            args=[
                time.time(), self._state_prefix, _SWEEP_LIMIT, self._ended_prefix,
                encode_gone(expired(self.idle_timeout_s)),
                round(tombstone_s(self.idle_timeout_s) * 1000),
            ],
        )  # fmt: skip
        expired_keys = [session_of(name) for name in gone] + self._noticed
        self._noticed = []
        return expired_keys

    @guarded("start")
    async def start(self, turns: Turns) -> None:
        """Nothing runs in the background (expiry happens in expire()): notes the data's
        generation, to tell later whether Redis lost it."""
        await self._generation.check()

    async def close(self) -> None:
        await self._client.aclose()
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
    pipe: Any,
    prefix: str,
    keys: Sequence[SessionKey],
    state: State,
    rows: Sequence[int],
    progress: Sequence[Progress],
    keep_s: float,
    *,
    ended: bool = False,
) -> None:
    """Queues on `pipe` each session's record (its row of `state` and its progress) under
    `prefix` (`state:` for live sessions, `ended:` for ended ones), kept for `keep_s`. The
    record of an end keeps its state only when its final step carried an offset: for a
    retry of that step."""
    for key, row, one in zip(keys, rows, progress, strict=True):
        kept = {} if ended and one.last is None else one_row(state, row)
        record = encode_record(key, kept, one)
        pipe.set(prefix + member(key), record, px=round(keep_s * 1000))


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
