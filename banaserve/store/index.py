"""The Global KV Cache Store's bookkeeping: which block key lives in which arena slot.

Plain data, no I/O, so the store server and the simulator's store model run the same rules:
- Put is two-phase. `reserve` hands a writer free slots for the keys the store lacks; the keys
  become visible only at `commit`, so no reader ever sees a partial block. A reservation that is
  not committed within `reserve_timeout_s` (its writer died) is dropped and its slots freed.
- A read takes a lease on the committed prefix of its keys; leased slots are never evicted or
  reused until `release` or until the lease times out (a dead reader).
- Eviction is LRU over committed, unleased blocks, down to `low_watermark` of the slots once a
  reservation would take usage above `high_watermark`.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass, field

Key = bytes


@dataclass(slots=True)
class Entry:
    slot: int
    readers: int = 0


@dataclass(slots=True)
class Reservation:
    keys: list[Key]
    slots: list[int]  # -1 where the key needs no write (already stored or no room)
    deadline: float


@dataclass(slots=True)
class Lease:
    entries: list[Entry]
    deadline: float


@dataclass(slots=True)
class IndexStats:
    hits: int = 0  # blocks served to readers
    misses: int = 0  # blocks asked for and not found (the first absent key of a lookup)
    puts: int = 0  # blocks committed
    evictions: int = 0
    refused: int = 0  # blocks a writer could not place (no free or evictable slot)
    expired_puts: int = 0
    expired_leases: int = 0


@dataclass
class StoreIndex:
    num_slots: int
    high_watermark: float = 0.95
    low_watermark: float = 0.90
    reserve_timeout_s: float = 30.0
    lease_timeout_s: float = 30.0
    entries: OrderedDict[Key, Entry] = field(default_factory=OrderedDict)  # committed, LRU first
    reservations: dict[int, Reservation] = field(default_factory=dict)
    leases: dict[int, Lease] = field(default_factory=dict)
    stats: IndexStats = field(default_factory=IndexStats)

    def __post_init__(self) -> None:
        if self.num_slots <= 0:
            raise ValueError(f"the store needs at least one slot, got {self.num_slots}")
        if not 0 < self.low_watermark <= self.high_watermark <= 1:
            raise ValueError("watermarks must satisfy 0 < low <= high <= 1")
        self.free: list[int] = list(range(self.num_slots - 1, -1, -1))
        self.pending: set[Key] = set()  # keys reserved by a writer, not yet committed
        self._ids = itertools.count(1)

    @property
    def num_used(self) -> int:
        return self.num_slots - len(self.free)

    def lookup(self, keys: list[Key]) -> int:
        """How many of `keys`, from the first, are stored (committed)."""
        n = 0
        for k in keys:
            if k not in self.entries:
                break
            n += 1
        return n

    # ----- reads -----

    def acquire(self, keys: list[Key], now: float) -> tuple[int, list[int]]:
        """Lease the stored prefix of `keys`: (lease id, its slots); id 0 when nothing is stored."""
        entries = []
        for k in keys:
            e = self.entries.get(k)
            if e is None:
                self.stats.misses += 1
                break
            self.entries.move_to_end(k)
            e.readers += 1
            entries.append(e)
        if not entries:
            return 0, []
        self.stats.hits += len(entries)
        lid = next(self._ids)
        self.leases[lid] = Lease(entries, now + self.lease_timeout_s)
        return lid, [e.slot for e in entries]

    def release(self, lease_id: int) -> None:
        lease = self.leases.pop(lease_id, None)
        for e in lease.entries if lease else ():
            e.readers -= 1

    # ----- writes -----

    def reserve(self, keys: list[Key], now: float) -> tuple[int, list[int]]:
        """Slots for the keys the store lacks (-1 for the others): (put id, slots)."""
        slots = []
        for k in keys:
            if k in self.entries:
                self.entries.move_to_end(k)  # written again: recently used
            if k in self.entries or k in self.pending or not self._make_room():
                if k not in self.entries and k not in self.pending:
                    self.stats.refused += 1
                slots.append(-1)
                continue
            slots.append(self.free.pop())
            self.pending.add(k)
        pid = next(self._ids)
        self.reservations[pid] = Reservation(list(keys), slots, now + self.reserve_timeout_s)
        return pid, slots

    def commit(self, put_id: int) -> int:
        """Make a reservation's blocks visible; returns how many were committed."""
        r = self.reservations.pop(put_id, None)
        if r is None:
            return 0
        n = 0
        for k, s in zip(r.keys, r.slots):
            if s >= 0:
                self.pending.discard(k)
                self.entries[k] = Entry(s)
                n += 1
        self.stats.puts += n
        return n

    def abort(self, put_id: int) -> None:
        """Drop a reservation unseen: its slots go back to the free list."""
        r = self.reservations.pop(put_id, None)
        for k, s in zip(r.keys, r.slots) if r else ():
            if s >= 0:
                self.pending.discard(k)
                self.free.append(s)

    def _make_room(self) -> bool:
        """Free a slot if none is left, and evict down to the low watermark above the high one."""
        if (self.num_used + 1) > self.high_watermark * self.num_slots or not self.free:
            target = int(self.low_watermark * self.num_slots)
            victims = [k for k, e in self.entries.items() if e.readers == 0]
            for k in victims:
                if self.num_used < max(target, 1) and self.free:
                    break
                self.free.append(self.entries.pop(k).slot)
                self.stats.evictions += 1
        return bool(self.free)

    # ----- time -----

    def expire(self, now: float) -> None:
        """Drop reservations and leases whose holders went silent (a dead writer or reader)."""
        for pid in [p for p, r in self.reservations.items() if r.deadline < now]:
            self.abort(pid)
            self.stats.expired_puts += 1
        for lid in [x for x, lease in self.leases.items() if lease.deadline < now]:
            self.release(lid)
            self.stats.expired_leases += 1
