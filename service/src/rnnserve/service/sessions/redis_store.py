"""States in Redis, so that several server processes serve the same sessions and a
session outlives the process that started it.

Each session is one Redis string (redis/records.py: a small JSON header, the raw float32
state and, when its last step carried `sequence_offset`, that step's answer), expiring
after the idle timeout (refreshed by every step). The session index (redis/index.py) counts
the sessions, each principal's and each model version's (redis/census.py), and has exactly
one process report each expiry. The index is kept per bucket, beside the states it indexes
(redis/keys.py: one bucket on one server, 64 hash slots in a cluster), so that each write
is one atomic script on one slot; a count adds the buckets' up.

A session that ends leaves a record of its end (`ended:<session>`, in its bucket) for the
idle timeout: a client's end its step count and, when its final step carried
`sequence_offset`, that step and the state it started from, for a retry of it; an expiry,
noticed by the sweep, a tombstone saying so. When Redis loses its data (a restart without
persistence, a flush), `Generation` notices (redis/generation.py), and for the idle
timeout after it a step of a sequence Redis no longer knows hears that its state was lost
(ABORTED), not that it was never started.

Redis faults: every call is bounded by `state_store_timeout_s` (redis/client.py: Timeouts);
a call that cannot reach Redis (in a cluster: once the client's failover retries gave up)
raises StoreUnavailable through the store's Reachability (redis/guard.py,
reachability.py): UNAVAILABLE for the client, one warning in the log.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from rnnserve.service.redis_url import where
from rnnserve.service.sessions.reachability import Reachability
from rnnserve.service.sessions.redis.census import RedisCensus
from rnnserve.service.sessions.redis.client import (
    UNREACHABLE,
    Command,
    NotConfirmed,
    NotSent,
    RedisClient,
    Script,
)
from rnnserve.service.sessions.redis.generation import Generation
from rnnserve.service.sessions.redis.guard import guarded
from rnnserve.service.sessions.redis.index import INDEX, UNINDEX, SessionIndex, version_tag
from rnnserve.service.sessions.redis.keys import member, session_of
from rnnserve.service.sessions.redis.records import (
    encode_gone,
    encode_record,
    load_record,
    one_row,
)
from rnnserve.service.sessions.state import (
    Conflict,
    Loaded,
    Progress,
    SessionKey,
    expired,
    tombstone_s,
)
from rnnserve.service.sessions.turns import Turns
from rnnserve.service.types import State

_SWEEP_LIMIT = 1000  # members examined per bucket and expire() call, to keep each script short

# Every script touches the keys of one bucket (redis/keys.py): one hash slot in a cluster;
# KEYS[1..3] are the bucket's index (redis/index.py).

# Lua shared by the scripts that read a stored record's step count (records.py: a length,
# then the JSON header that holds it). `moved` is the rule of a write conditional on the
# count its step was applied on (`prior`, -1 for a start that found no state): it applies
# only while the session holds that count; else 'moved:<count>'. Both return the count.
_COUNT_OF = """
local function header_of(record)
  local length = struct.unpack('<I4', record)
  return cjson.decode(string.sub(record, 5, 4 + length))
end
local function moved(held, prior)
  local count = header_of(held)['offset']
  if prior == '-1' or count ~= tonumber(prior) then return 'moved:' .. count, count end
  return nil, count
end
"""
# KEYS: the index (3), the version tags, then each session's state and unsure keys. ARGV:
# deadline, ttl in ms, then per session its member, record, version tag, version, the count
# its step was applied on (Progress.prior: -1 for a start that found no state, '' for one
# not conditional) and whether the step carries an offset ('1' or ''). Stores and indexes
# each state whose session still holds that count (none, for -1), unless the step
# carries no offset and the session is unsure (an earlier step's outcome is unknown); a step
# with an offset, or a start, makes it sure again; an offsetless step refused leaves it
# unsure (it cannot tell its own earlier attempt from another step). A session that holds
# this very record already (the batch sent again after a broken connection) is 'ok'.
# Returns per session 'ok', 'gone' (it holds no state), 'moved:<count>' or
# 'unsure:<count>'.
_SAVE = Script(
    INDEX
    + _COUNT_OF
    + """
local verdicts = {}
for s = 1, (#KEYS - 4) / 2 do
  local state, unsure = KEYS[3 + 2 * s], KEYS[4 + 2 * s]
  local at = 6 * (s - 1) + 3
  local prior, counted = ARGV[at + 4], ARGV[at + 5] == '1'
  local verdict = 'ok'
  if prior ~= '' then
    local held = redis.call('GET', state)
    if not held then
      if prior ~= '-1' then verdict = 'gone' end
    else
      local changed, count = moved(held, prior)
      if held == ARGV[at + 1] then
        verdict = 'ok'  -- this write, sent again (a failover), or an attempt giving the same
      elseif changed then
        verdict = changed
      elseif not counted and redis.call('EXISTS', unsure) == 1 then
        verdict = 'unsure:' .. count
      end
    end
  end
  if verdict == 'ok' then
    redis.call('SET', state, ARGV[at + 1], 'PX', ARGV[2])
    index(ARGV[at], ARGV[1], ARGV[at + 2], ARGV[at + 3])
    if counted or prior == '' or prior == '-1' then redis.call('DEL', unsure) end
  elseif not counted and verdict ~= 'gone' then
    redis.call('SET', unsure, '1', 'PX', ARGV[2])
  end
  verdicts[s] = verdict
end
return verdicts
"""
)
# KEYS: a session's state and unsure keys. ARGV: the count its offsetless step whose
# outcome is unknown was applied on, the count after it, ttl in ms. Makes the session unsure
# while it holds either count (no step with an offset since): a blind retry of that step is
# refused, and so is its write, should it reach Redis only now.
_FENCE = Script(
    _COUNT_OF
    + """
local held = redis.call('GET', KEYS[1])
if not held then return 0 end
local header = header_of(held)
local count = header['offset']
if count == tonumber(ARGV[1]) or (count == tonumber(ARGV[2]) and header['last'] == nil) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
  return 1
end
return 0
"""
)
# KEYS: the index (3), then each session's state and ended keys. ARGV: the ended record's
# ttl in ms, then per session its member, the count its final step was applied on ('' for a
# start not conditional, -1 for one that found no state) and the record of its end. Ends
# each session that still holds that count (none, for -1; as _SAVE: a late write must not
# end the sequence its id began since), leaving the record;
# one ended already with this very record (a batch sent again) is 'ok'. Returns per session
# 'ok', 'gone' or 'moved:<count>'.
_END = Script(
    UNINDEX
    + _COUNT_OF
    + """
local verdicts = {}
for s = 1, (#KEYS - 3) / 2 do
  local state, ended = KEYS[2 + 2 * s], KEYS[3 + 2 * s]
  local at = 3 * (s - 1) + 2
  local prior, record = ARGV[at + 1], ARGV[at + 2]
  local verdict = 'ok'
  if prior ~= '' then
    local held = redis.call('GET', state)
    if not held then
      if prior ~= '-1' and redis.call('GET', ended) ~= record then verdict = 'gone' end
    else
      verdict = moved(held, prior) or 'ok'
    end
  end
  if verdict == 'ok' then
    redis.call('SET', ended, record, 'PX', ARGV[1])
    redis.call('DEL', state)
    unindex(ARGV[at])
  end
  verdicts[s] = verdict
end
return verdicts
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
        state_durability and its timeout (redis/client.py)."""
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
        # Offsetless steps whose outcome is unknown, to make their sessions unsure (_FENCE)
        # with the next batch that reaches Redis: the count each was applied on and after.
        self._unsure: dict[SessionKey, tuple[int, int]] = {}

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

    @guarded("save", writes=True)
    async def save(
        self,
        keys: Sequence[SessionKey],
        state: State,
        rows: Sequence[int],
        progress: Sequence[Progress],
    ) -> list[Conflict | None]:
        if not keys:
            return []
        deadline = time.time() + self.idle_timeout_s
        space, names = self._redis.keys, [member(key) for key in keys]
        ttl = round(self.idle_timeout_s * 1000)
        groups = space.by_bucket(names)
        commands = []
        for bucket, group in groups.items():
            args: list[Any] = [deadline, ttl]
            touched = []
            for i in group:
                one, key = progress[i], keys[i]
                record = encode_record(key, one_row(state, rows[i]), one)
                tag = version_tag(key.model, key.version)
                prior = "" if one.prior is None else one.prior
                args += [names[i], record, tag, json.dumps([key.model, key.version])]
                args += [prior, "" if one.last is None else "1"]
                touched += [space.key("state", names[i]), space.key("unsure", names[i])]
            indexes = [*self._index.keys(bucket), self._index.tags(bucket)]
            commands.append(Command.call(_SAVE, [*indexes, *touched], args))
        try:
            await self._fence()
            replies = await self._redis.run(commands, durable=True)
        except NotSent:  # not written: the step may be sent again, as it is
            raise
        except (
            *UNREACHABLE,
            NotConfirmed,
        ):  # written or not: a blind retry must not apply it twice
            for key, one in zip(keys, progress, strict=True):
                if one.prior is not None and one.last is None:
                    self._unsure[key] = (one.prior, one.offset)
            raise
        saved: list[Conflict | None] = [None] * len(keys)
        for group, verdicts in zip(groups.values(), replies, strict=True):
            for index, verdict in zip(group, verdicts, strict=True):
                saved[index] = _conflict(verdict)
        return saved

    async def _fence(self) -> None:
        """Makes the sessions of the offsetless steps whose outcome is unknown unsure
        (_FENCE): before any other write, in a round trip of its own (a script Redis does
        not know yet is sent again after the others of its batch), only while some wait."""
        if not self._unsure:
            return
        fencing = list(self._unsure.items())
        space, ttl = self._redis.keys, round(self.idle_timeout_s * 1000)
        commands = []
        for key, (prior, after) in fencing:
            name = member(key)
            touched = [space.key("state", name), space.key("unsure", name)]
            commands.append(Command.call(_FENCE, touched, [prior, after, ttl]))
        await self._redis.run(commands)
        for key, counts in fencing:
            if self._unsure.get(key) == counts:
                del self._unsure[key]

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
        return await self._delete(keys)

    @guarded("end", writes=True)
    async def end(
        self,
        keys: Sequence[SessionKey],
        state: State,
        rows: Sequence[int],
        progress: Sequence[Progress],
    ) -> list[Conflict | None]:
        if not keys:
            return []
        space, names = self._redis.keys, [member(key) for key in keys]
        groups = space.by_bucket(names)
        commands = []
        for bucket, group in groups.items():
            args: list[Any] = [round(self.idle_timeout_s * 1000)]
            touched = []
            for i in group:
                one = progress[i]
                kept = {} if one.last is None else one_row(state, rows[i])  # for a retry
                prior = "" if one.prior is None else one.prior
                args += [names[i], prior, encode_record(keys[i], kept, one)]
                touched += [space.key("state", names[i]), space.key("ended", names[i])]
            commands.append(Command.call(_END, [*self._index.keys(bucket), *touched], args))
        replies = await self._redis.run(commands, durable=True)
        ended: list[Conflict | None] = [None] * len(keys)
        for group, verdicts in zip(groups.values(), replies, strict=True):
            for index, verdict in zip(group, verdicts, strict=True):
                ended[index] = _conflict(verdict)
        return ended

    async def _delete(self, keys: Sequence[SessionKey]) -> list[bool]:
        """Frees the sessions' states."""
        space, names = self._redis.keys, [member(key) for key in keys]
        groups = space.by_bucket(names)
        commands = []
        for bucket, group in groups.items():
            state_keys = [space.key("state", names[i]) for i in group]
            members = [names[i] for i in group]
            commands.append(
                Command.call(_DELETE, [*self._index.keys(bucket), *state_keys], members)
            )
        replies = await self._redis.run(commands, durable=True)
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
        await self._fence()
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


def _conflict(verdict: bytes) -> Conflict | None:
    """What _SAVE's verdict on one session says."""
    if verdict == b"ok":
        return None
    if verdict == b"gone":
        return Conflict(None)
    why, count = verdict.split(b":")
    return Conflict(int(count), unsure=why == b"unsure")
