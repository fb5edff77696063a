"""The default store: states in this process's memory.

The sessions of one state layout (one model version, in practice) keep their states in
one array, a row each: a step of many sessions gathers and scatters their rows with one
indexing operation, and an idle session costs little more than its state's bytes. Each
session's step count sits beside its row (an int64 array); the last step of a session is
kept (a side table) only when it carried `sequence_offset`, for a retry of it.

Sessions that end leave a record of their end (at most ENDED_KEPT records, each for at most
the idle timeout): a client's end its step count and, when its final step carried
`sequence_offset`, that step and the state it started from, for a retry of it; an expiry a
tombstone, so that a late step hears what became of its sequence. The sessions of each
model version are counted as they come and go, for `rnnserve_sessions_active`.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rnnserve.service.device import StateDevice
from rnnserve.service.sessions.device_slab import DeviceSlab, RowGraphs
from rnnserve.service.sessions.reachability import Reachability
from rnnserve.service.sessions.state import (
    Conflict,
    Gone,
    LastStep,
    Layout,
    Loaded,
    Progress,
    SessionKey,
    expired,
    fits,
    misfit,
    row_layout,
    tombstone_s,
)
from rnnserve.service.sessions.store import Live
from rnnserve.service.sessions.turns import Turns
from rnnserve.service.types import State

_GROWTH = 1.25  # a slab grows by a quarter: at most a fifth of its rows are spare
ENDED_KEPT = 10_000  # records of recently ended and expired sessions


class _Slab:
    """The states of every session of one layout: row `slot` of `data[name]` is one
    session's state `name`, `(before, after)` (layers*directions and hidden for the default
    models; see model/spec.py). With device_state, they are in `resident` instead, on the
    device, and `data` stays empty."""

    def __init__(self, layout: Layout, graphs: RowGraphs | None) -> None:
        self.layout = layout
        self.data = {
            name: np.zeros((0, shape[0], *shape[2:]), np.float32) for name, shape in layout.items()
        }
        self.resident = None if graphs is None else DeviceSlab(layout, graphs)
        self.deadlines = np.zeros(0)  # time.monotonic() after which a slot's session expired
        self.offsets = np.zeros(0, np.int64)  # time steps each slot's session has consumed
        self.last: dict[int, LastStep] = {}  # slot -> its last step, when kept for a retry
        self.owners: list[SessionKey | None] = []  # the session in each slot
        self._free: list[int] = []
        self.releases = 0  # slots given up so far: while it stays, no session left its slot

    def allocate(self, key: SessionKey) -> int:
        if not self._free:
            self._grow()
        slot = self._free.pop()
        self.owners[slot] = key
        return slot

    def release(self, slot: int) -> None:
        self.releases += 1
        self.owners[slot] = None
        self.deadlines[slot] = np.inf  # a free slot never expires
        self.last.pop(slot, None)
        self._free.append(slot)

    def keep_last(self, slot: int, last: LastStep | None) -> None:
        """The slot's last step kept for a retry, or none kept (a step without offset)."""
        if last is None:
            self.last.pop(slot, None)
        else:
            self.last[slot] = last

    def progress(self, slot: int) -> Progress:
        return Progress(self.offsets.item(slot), self.last.get(slot))

    def state(self, slot: int) -> State:
        """A copy of the slot's state as a one-row batch state (in host memory)."""
        if self.resident is not None:
            return self.resident.state(slot)
        return {name: data[slot][:, None].copy() for name, data in self.data.items()}

    def _grow(self) -> None:
        old = len(self.owners)
        new = max(16, int(old * _GROWTH))
        if self.resident is not None:
            self.resident.grow(new)
        else:
            for name, data in self.data.items():
                grown = np.empty((new, *data.shape[1:]), np.float32)
                grown[:old] = data
                self.data[name] = grown
        self.deadlines = np.concatenate([self.deadlines, np.full(new - old, np.inf)])
        self.offsets = np.concatenate([self.offsets, np.zeros(new - old, np.int64)])
        self.owners.extend([None] * (new - old))
        self._free.extend(range(new - 1, old - 1, -1))  # lowest slots first


def _index(positions: Sequence[int]) -> slice | np.ndarray:
    """Positions to index an axis with: consecutive ones (one position, or the rows of a
    whole batch) as a slice, basic indexing, several times faster than fancy indexing;
    others as one index array, converted once for every state it indexes."""
    if isinstance(positions, range) and positions.step == 1:  # the rows of a whole batch
        return slice(positions.start, positions.stop)
    count = len(positions)
    if count and positions[-1] - positions[0] == count - 1:
        first = positions[0]
        if count == 1 or list(positions) == list(range(first, first + count)):
            return slice(first, first + count)
    return np.fromiter(positions, np.intp, count)


def _gather(slab: _Slab, slots: Sequence[int], into: State, rows: Sequence[int]) -> None:
    """Copies slot slots[j] of `slab` into row rows[j] of `into`."""
    if slab.resident is not None:
        slab.resident.gather(slots, into, rows)
        return
    at, rows_at = _index(slots), _index(rows)
    for name, data in slab.data.items():
        # (sessions, before, after) -> (before, sessions, after)
        into[name][:, rows_at] = data[at].swapaxes(0, 1)


def _put(
    slab: _Slab,
    slots: list[int],
    at: slice | np.ndarray,
    state: State,
    rows: Sequence[int],
    deadline: float,
    offsets: Sequence[int] | np.ndarray,
) -> None:
    """Slot slots[j] of `slab` (`at` indexes them) set to row rows[j] of `state` and step
    count offsets[j], its idle timer restarted."""
    if slab.resident is not None:
        slab.resident.scatter(slots, state, rows)
    else:
        rows_at = _index(rows)
        for name, data in slab.data.items():
            data[at] = state[name][:, rows_at].swapaxes(0, 1)
    slab.deadlines[at] = deadline
    slab.offsets[at] = offsets


class _Live:
    """Sessions `load_live` found live, in `slots` of `slab` (indexed by `at`): `save_live`
    writes them back there unless a session left its slot meanwhile (it expired while its
    step ran: the slab's `releases` moved on)."""

    __slots__ = ("at", "counts", "keys", "releases", "slab", "slots")

    def __init__(
        self,
        counts: np.ndarray,
        keys: Sequence[SessionKey],
        slab: _Slab,
        slots: list[int],
        at: slice | np.ndarray,
    ) -> None:
        self.counts = counts
        self.keys = keys
        self.slab = slab
        self.slots = slots
        self.at = at
        self.releases = slab.releases


class _Entry:
    __slots__ = ("slab", "slot")

    def __init__(self, slab: _Slab, slot: int) -> None:
        self.slab = slab
        self.slot = slot


@dataclass(slots=True)
class _Ended:
    """A recently ended session: a client's end (its progress, `ended` set, and the state
    its final step started from when that step carried an offset, else none) or an
    expiry's tombstone (Gone, no state)."""

    deadline: float
    state: State  # one row, or empty
    record: Progress | Gone


class MemoryStore:
    def __init__(self, idle_timeout_s: float = 60.0, device: StateDevice | None = None) -> None:
        """`device`: where the states live (device_state), None for host memory."""
        self.idle_timeout_s = idle_timeout_s
        self.device = device
        self._graphs = None if device is None else RowGraphs(device)
        self.reachability = Reachability("memory", "this process")  # always answers
        self._entries: dict[SessionKey, _Entry] = {}
        self._slabs: dict[tuple[tuple[str, tuple[int, ...]], ...], _Slab] = {}  # by layout
        self._principals: Counter[str] = Counter()  # sessions held by each principal
        self._versions: Counter[tuple[str, str]] = Counter()  # by (model, version)
        self._ended: OrderedDict[SessionKey, _Ended] = OrderedDict()  # oldest first
        # Expired entries noticed outside expire(), waiting to be reported by it.
        self._noticed: list[SessionKey] = []

    async def load(
        self, keys: Sequence[SessionKey], into: State, rows: Sequence[int]
    ) -> list[Loaded]:
        now = time.monotonic()
        if len(keys) == 1:  # most steps: no slabs to group rows by
            return [self._load_one(keys[0], into, rows[0], now)]
        loaded: list[Loaded] = []
        slots: dict[_Slab, tuple[list[int], list[int]]] = {}  # slab -> (its slots, rows)
        fitting: _Slab | None = None  # the last slab whose layout fits: most rows share it
        for key, row in zip(keys, rows, strict=True):
            entry = self._live(key, now)
            if entry is None:
                loaded.append(self._load_ended(key, into, row, now))
                continue
            if entry.slab is not fitting:
                if not fits(entry.slab.layout, into):
                    loaded.append(misfit(key, entry.slab.layout, row_layout(into)))
                    continue
                fitting = entry.slab
            slab_slots, slab_rows = slots.setdefault(entry.slab, ([], []))
            slab_slots.append(entry.slot)
            slab_rows.append(row)
            loaded.append(entry.slab.progress(entry.slot))
        for slab, (slab_slots, slab_rows) in slots.items():
            _gather(slab, slab_slots, into, slab_rows)
        return loaded

    def load_live(self, keys: Sequence[SessionKey], into: State) -> Live | None:
        """`load` of sessions that are all live, in one slab that fits `into` (a steady
        stream of multi-session requests): keys[i]'s state copied into row i of `into`,
        and the step counts, without a Progress per key. None, having changed nothing,
        when one is not (`load` says what became of it)."""
        entries = self._entries
        slab: _Slab | None = None
        slots: list[int] = []
        for key in keys:
            entry = entries.get(key)
            if entry is None or (slab is not None and entry.slab is not slab):
                return None
            slab = entry.slab
            slots.append(entry.slot)
        if slab is None or not fits(slab.layout, into):
            return None
        at = _index(slots)  # for the reads here and save_live's writes
        # np.minimum.reduce, not .min(): ndarray.min runs numpy's interpreted _methods._amin.
        if np.minimum.reduce(slab.deadlines[at]) < time.monotonic():  # expired: `load` drops it
            return None
        _gather(slab, slots, into, range(len(keys)))
        counts = slab.offsets[at].copy()  # a slice is a view: the caller adds to its counts
        return _Live(counts, keys, slab, slots, at)

    def _load_one(self, key: SessionKey, into: State, row: int, now: float) -> Loaded:
        """`load` of one key: its state copied into `row` of `into`."""
        entry = self._live(key, now)
        if entry is None:
            return self._load_ended(key, into, row, now)
        slab, slot = entry.slab, entry.slot
        if not fits(slab.layout, into):
            return misfit(key, slab.layout, row_layout(into))
        if slab.resident is not None:
            slab.resident.gather([slot], into, [row])
        else:
            for name, data in slab.data.items():
                into[name][:, row] = data[slot]
        return slab.progress(slot)

    def _load_ended(self, key: SessionKey, into: State, row: int, now: float) -> Loaded:
        """The record of the key's recent end, its state (if it kept one) copied into
        `row`; else None."""
        ended = self._ended.get(key)
        if ended is None:
            return None
        if ended.deadline < now:
            del self._ended[key]
            return None
        if ended.state:
            layout = row_layout(ended.state)
            if not fits(layout, into):
                return misfit(key, layout, row_layout(into))
            for name, array in ended.state.items():
                into[name][:, row] = array[:, 0]
        return ended.record

    async def save(
        self,
        keys: Sequence[SessionKey],
        state: State,
        rows: Sequence[int],
        progress: Sequence[Progress],
    ) -> list[Conflict | None]:
        """Writes every step: one process, whose session manager steps a session one step
        at a time, writes here (no write is refused, none is uncertain)."""
        slab = self._slab(state)
        deadline = time.monotonic() + self.idle_timeout_s
        if len(keys) == 1:  # most steps: one row, indexed by its number
            self._save_one(keys[0], state, rows[0], progress[0], slab, deadline)
            return [None]
        offsets = [one.offset for one in progress]
        slots = self._write(keys, state, rows, slab, deadline, offsets)
        for slot, one in zip(slots, progress, strict=True):
            slab.keep_last(slot, one.last)
        return [None] * len(keys)

    def save_live(self, live: Live, state: State) -> None:
        """`save` of steps without an offset (they keep no last step): the state of
        `live`'s keys[i] from row i of `state`, with step count counts[i], without a
        Progress per key, into the slots they were loaded from."""
        assert isinstance(live, _Live)  # load_live's
        deadline = time.monotonic() + self.idle_timeout_s
        slab, slots, rows = live.slab, live.slots, range(len(live.slots))
        if slab.releases == live.releases and fits(slab.layout, state):
            _put(slab, slots, live.at, state, rows, deadline, live.counts)
        else:  # a session left its slot while the step ran: each is looked up again
            slab = self._slab(state)
            slots = self._write(live.keys, state, rows, slab, deadline, live.counts)
        if slab.last:  # kept only of steps that carried an offset: most slabs keep none
            for slot in slots:
                slab.keep_last(slot, None)

    def _write(
        self,
        keys: Sequence[SessionKey],
        state: State,
        rows: Sequence[int],
        slab: _Slab,
        deadline: float,
        offsets: Sequence[int] | np.ndarray,
    ) -> list[int]:
        """Each key's slot of `slab` (taken when it has none) set to its row of `state`
        and its step count, its idle timer restarted; the slots."""
        slots = [self._slot(key, slab) for key in keys]
        _put(slab, slots, _index(slots), state, rows, deadline, offsets)
        return slots

    def _save_one(
        self,
        key: SessionKey,
        state: State,
        row: int,
        progress: Progress,
        slab: _Slab,
        deadline: float,
    ) -> None:
        """`save` of one key: its row of `state`, in its slot of `slab`."""
        slot = self._slot(key, slab)
        if slab.resident is not None:
            slab.resident.scatter([slot], state, [row])
        else:
            for name, data in slab.data.items():
                data[slot] = state[name][:, row]
        slab.deadlines[slot] = deadline
        slab.offsets[slot] = progress.offset
        slab.keep_last(slot, progress.last)

    async def contains(self, keys: Sequence[SessionKey]) -> list[bool]:
        now = time.monotonic()
        return [self._live(key, now) is not None for key in keys]

    async def delete(self, keys: Sequence[SessionKey]) -> list[bool]:
        deleted = []
        for key in keys:
            entry = self._entries.get(key)
            if entry is not None:
                self._drop(key, entry)
            deleted.append(entry is not None)
        return deleted

    async def end(
        self,
        keys: Sequence[SessionKey],
        state: State,
        rows: Sequence[int],
        progress: Sequence[Progress],
    ) -> list[Conflict | None]:
        await self.delete(keys)
        for key, row, one in zip(keys, rows, progress, strict=True):
            kept: State = {}  # the state is needed only to answer a retry of the final step
            if one.last is not None:
                kept = {name: array[:, row : row + 1].copy() for name, array in state.items()}
            self._record(key, kept, Progress(one.offset, one.last, True))
        return [None] * len(keys)

    def _record(self, key: SessionKey, state: State, record: Progress | Gone) -> None:
        keep_s = self.idle_timeout_s if isinstance(record, Progress) else self._tombstone_s
        self._ended.pop(key, None)  # the newest record goes last
        self._ended[key] = _Ended(time.monotonic() + keep_s, state, record)
        while len(self._ended) > ENDED_KEPT:
            self._ended.popitem(last=False)

    @property
    def _tombstone_s(self) -> float:
        return tombstone_s(self.idle_timeout_s)

    async def count(self, principal: str | None = None) -> int:
        return len(self._entries) if principal is None else self._principals[principal]

    def active(self) -> dict[tuple[str, str], int]:
        """Sessions holding state by (model, version); safe from any thread (one dict
        copy, atomic under the GIL)."""
        return dict(self._versions)

    async def expire(self) -> list[SessionKey]:
        now = time.monotonic()
        gone = expired(self.idle_timeout_s)
        expired_keys = []
        for slab in self._slabs.values():
            for slot in np.flatnonzero(slab.deadlines < now).tolist():
                key = slab.owners[slot]
                if key is not None:
                    expired_keys.append(key)
                    self._drop(key, self._entries[key])
                    self._record(key, {}, gone)
        while self._ended and next(iter(self._ended.values())).deadline < now:
            self._ended.popitem(last=False)
        expired_keys += self._noticed
        self._noticed = []
        return expired_keys

    async def start(self, turns: Turns) -> None:
        """Nothing runs in the background: expiry happens in expire()."""

    async def close(self) -> None:
        self._entries.clear()
        self._slabs.clear()
        self._principals.clear()
        self._ended.clear()
        self._versions.clear()

    # For the owned store, which keeps a worker's sessions here.

    def holds(self, key: SessionKey) -> bool:
        """Whether the key has a state here, expired or not."""
        return key in self._entries

    def sessions(self) -> list[SessionKey]:
        return list(self._entries)

    def record_of(self, key: SessionKey) -> tuple[State, Progress] | None:
        """A copy of the key's state as a one-row batch state, and its progress; None when
        it has none."""
        entry = self._live(key, time.monotonic())
        if entry is None:
            return None
        return entry.slab.state(entry.slot), entry.slab.progress(entry.slot)

    def _slab(self, state: State) -> _Slab:
        """The slab of the layout of one row of `state` (a server has a few layouts: they
        are looked through before one is built to look up)."""
        for slab in self._slabs.values():
            if fits(slab.layout, state):
                return slab
        layout = row_layout(state)
        slab = self._slabs[tuple(layout.items())] = _Slab(layout, self._graphs)
        return slab

    def _slot(self, key: SessionKey, slab: _Slab) -> int:
        """The key's slot in `slab`, taken when the key has none there yet."""
        entry = self._entries.get(key)
        if entry is not None and entry.slab is slab:
            return entry.slot
        if entry is None:
            self._principals[key.principal] += 1
            self._versions[key.model, key.version] += 1
            self._ended.pop(key, None)  # started again: the record of its last run is void
        else:  # the same id with another layout: move it
            entry.slab.release(entry.slot)
        slot = slab.allocate(key)
        self._entries[key] = _Entry(slab, slot)
        return slot

    def _live(self, key: SessionKey, now: float) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None and entry.slab.deadlines.item(entry.slot) < now:
            self._drop(key, entry)
            self._noticed.append(key)
            self._record(key, {}, expired(self.idle_timeout_s))
            return None
        return entry

    def _drop(self, key: SessionKey, entry: _Entry) -> None:
        del self._entries[key]
        entry.slab.release(entry.slot)
        self._principals[key.principal] -= 1
        if not self._principals[key.principal]:
            del self._principals[key.principal]
        self._versions[key.model, key.version] -= 1  # a version at 0 stays: the gauge says 0
