"""Where the Redis stores' keys lie, and what a session is called there.

A session's keys (its state, the record of its end, its owner) and the index entries that
count it lie in one *bucket*, and every script that must be atomic touches the keys of one
bucket. On one server there is one bucket and the keys are named as they always were
(`rnnserve:state:<session>`, `rnnserve:sessions`). In a cluster a bucket is one hash slot:
its keys carry the bucket's hash tag (`rnnserve:{s1234}:state:<session>`), a session's
bucket is a hash of its name, and the buckets' tags are picked to spread evenly over the
16384 slots, so that masters holding equal ranges of slots hold equal shares of the
sessions (64 buckets: 21 or 22 on each of three masters). Counting and expiry sum and
sweep the buckets' indexes; no key is global.

A session's name in Redis (`member`) is its SessionKey as compact JSON: it turns back into
the key (`session_of`) and starts with the principal (`principal_prefix`).
"""

from __future__ import annotations

import functools
import json
import zlib
from collections.abc import Sequence

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from rnnserve.service.sessions.state import SessionKey

CLUSTER_BUCKETS = 64


class Keyspace:
    """Where a namespace's keys lie: `prefix(bucket)` starts every key of a bucket."""

    def __init__(self, namespace: str, cluster: bool) -> None:
        if "{" in namespace or "}" in namespace:
            raise ValueError(f"namespace {namespace!r}: braces would make a hash tag")
        self.buckets = CLUSTER_BUCKETS if cluster else 1
        if cluster:
            self._prefixes = [f"{namespace}:{{{tag}}}:" for tag in spread_tags(self.buckets)]
        else:
            self._prefixes = [f"{namespace}:"]

    def bucket(self, name: str) -> int:
        if self.buckets == 1:
            return 0
        return zlib.crc32(name.encode()) % self.buckets

    def prefix(self, bucket: int) -> str:
        return self._prefixes[bucket]

    def key(self, kind: str, name: str) -> str:
        """The key of `kind` (state, ended, owner) of the session named `name`."""
        return f"{self._prefixes[self.bucket(name)]}{kind}:{name}"

    def by_bucket(self, names: Sequence[str]) -> dict[int, list[int]]:
        """The positions of `names`, grouped by bucket."""
        groups: dict[int, list[int]] = {}
        for position, name in enumerate(names):
            groups.setdefault(self.bucket(name), []).append(position)
        return groups


@functools.cache
def spread_tags(buckets: int) -> tuple[str, ...]:
    """A hash tag per bucket, the i-th hashing into the i-th of `buckets` equal ranges of
    slots (the first of `s0`, `s1`, ... that does): the same in every process."""
    width = REDIS_CLUSTER_HASH_SLOTS / buckets
    tags, candidate = [], 0
    for bucket in range(buckets):
        while True:
            tag = f"s{candidate}"
            candidate += 1
            if int(key_slot(tag.encode()) // width) == bucket:
                tags.append(tag)
                break
            if candidate > 1_000_000:  # cannot happen: CRC16 fills every range
                raise AssertionError(f"no tag hashes into slot range {bucket}")
        candidate = 0
    return tuple(tags)


def member(key: SessionKey) -> str:
    """The session's name in Redis. JSON keeps 7 and "7" apart, turns back into the key
    and starts with the principal (`principal_prefix`)."""
    return json.dumps(list(key), separators=(",", ":"))


def principal_prefix(principal: str) -> str:
    """What the name of every session of `principal`, and of no other, starts with."""
    return json.dumps([principal], separators=(",", ":"))[:-1] + ","


def session_of(name: bytes | str) -> SessionKey:
    return SessionKey(*json.loads(name))
