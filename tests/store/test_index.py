"""The store's bookkeeping alone: two-phase puts, leases, LRU eviction above a watermark, expiry."""

import random

import pytest

from banaserve.store.index import StoreIndex


def keys(*names: int) -> list[bytes]:
    return [n.to_bytes(16, "little") for n in names]


def put(idx: StoreIndex, ks: list[bytes], now: float = 0.0) -> list[int]:
    pid, slots = idx.reserve(ks, now)
    idx.commit(pid)
    return slots


def test_a_reserved_block_is_invisible_until_committed():
    idx = StoreIndex(8)
    pid, slots = idx.reserve(keys(1, 2), 0.0)
    assert all(s >= 0 for s in slots) and len(set(slots)) == 2
    assert idx.lookup(keys(1, 2)) == 0 and idx.acquire(keys(1), 0.0) == (0, [])
    # a second writer of the same keys is told they need no write
    assert idx.reserve(keys(1, 2), 0.0)[1] == [-1, -1]
    assert idx.commit(pid) == 2
    assert idx.lookup(keys(1, 2, 3)) == 2


def test_abandoned_put_expires_and_frees_its_slots():
    idx = StoreIndex(4, reserve_timeout_s=1.0)
    idx.reserve(keys(1, 2, 3), 0.0)
    idx.expire(0.5)
    assert idx.num_used == 3
    idx.expire(2.0)
    assert idx.num_used == 0 and idx.lookup(keys(1)) == 0 and idx.stats.expired_puts == 1
    assert put(idx, keys(1, 2, 3, 4)) != [-1] * 4  # the slots are reusable


def test_lookup_and_acquire_stop_at_the_first_missing_block():
    idx = StoreIndex(8)
    put(idx, keys(1, 2, 4))
    assert idx.lookup(keys(1, 2, 3, 4)) == 2
    lid, slots = idx.acquire(keys(1, 2, 3, 4), 0.0)
    assert lid and len(slots) == 2 and idx.stats.hits == 2 and idx.stats.misses == 1


def test_lru_eviction_above_the_watermark_spares_leased_blocks():
    idx = StoreIndex(10, high_watermark=0.8, low_watermark=0.5)
    put(idx, keys(*range(8)))  # 8 of 10 used: at the high watermark
    lid, _ = idx.acquire(keys(0, 1), 0.0)  # oldest, but leased; also touched (most recent)
    put(idx, keys(100))  # would exceed 80%: evict LRU unleased down to 50%
    assert idx.lookup(keys(0, 1)) == 2  # leased: kept
    assert idx.lookup(keys(2)) == 0 and idx.stats.evictions > 0
    assert idx.num_used <= 6
    idx.release(lid)
    assert all(e.readers == 0 for e in idx.entries.values())


def test_a_full_store_of_leased_blocks_refuses_writes():
    idx = StoreIndex(2, high_watermark=1.0, low_watermark=1.0)
    put(idx, keys(1, 2))
    idx.acquire(keys(1, 2), 0.0)
    _, slots = idx.reserve(keys(3), 0.0)
    assert slots == [-1] and idx.stats.refused == 1
    idx.expire(100.0)  # the reader died: its lease lapses and the blocks become evictable
    assert idx.reserve(keys(3), 100.0)[1] != [-1]


def test_random_operations_keep_slots_consistent():
    """Brute-force invariant check: every slot is free, reserved or committed, exactly once."""
    rng = random.Random(7)
    idx = StoreIndex(16, high_watermark=0.9, low_watermark=0.6, reserve_timeout_s=5, lease_timeout_s=5)
    puts, leases, now = [], [], 0.0
    for _ in range(3000):
        now += rng.random()
        op = rng.random()
        ks = keys(*(rng.randrange(40) for _ in range(rng.randint(1, 5))))
        if op < 0.35:
            puts.append(idx.reserve(ks, now)[0])
        elif op < 0.6 and puts:
            (idx.commit if rng.random() < 0.8 else idx.abort)(puts.pop(rng.randrange(len(puts))))
        elif op < 0.8:
            leases.append(idx.acquire(ks, now)[0])
        elif op < 0.95 and leases:
            idx.release(leases.pop(rng.randrange(len(leases))))
        else:
            idx.expire(now)
        reserved = [s for r in idx.reservations.values() for s in r.slots if s >= 0]
        committed = [e.slot for e in idx.entries.values()]
        assert sorted(idx.free + reserved + committed) == list(range(16))
        assert all(e.readers >= 0 for e in idx.entries.values())


def test_bad_configuration():
    with pytest.raises(ValueError):
        StoreIndex(0)
    with pytest.raises(ValueError):
        StoreIndex(4, high_watermark=0.5, low_watermark=0.9)
